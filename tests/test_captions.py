"""Captions by a vision-language model (``--caption vlm``) through the tiny random Qwen2.5-VL of
``relight_datasets.testing``: every row gets a caption, the same build gives the same captions, the report and card
name the model, a VLM that cannot load stops the build in one line, and ``--caption none`` loads nothing. Random
weights give gibberish, so the tests check types, presence and determinism, not words."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import build_small, save_resized_faces
from datasets import load_dataset

import relight_datasets
from relight_datasets.config import ConfigError, load_config
from relight_datasets.models import loading
from relight_datasets.models.captioner import Captioner
from relight_datasets.testing import make_tiny_captioner
from relight_datasets.transforms import RelightOnTheFly
from relight_datasets.transforms.caption import caption_images

WEIGHT_FREE = ["--segmenter", "classical", "--normals", "classical"]
SHORT = ["--set", "caption.max_new_tokens=6"]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return make_tiny_captioner(tmp_path_factory.mktemp("tiny") / "captioner")


@pytest.fixture(scope="module")
def faces(tmp_path_factory, faces_dir):
    return save_resized_faces(faces_dir, tmp_path_factory.mktemp("faces"), 3, 96)


def build(faces, out, *extra: str) -> tuple[int, list[dict], dict]:
    return build_small(faces, out, *WEIGHT_FREE, *extra)


@pytest.fixture(scope="module")
def captioned(captioner, faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("captioned") / "o"
    code, rows, report = build(faces, out, "--caption", "vlm", "--caption-model", str(captioner), *SHORT)
    assert code == 0
    return out, rows, report


def test_every_row_gets_a_caption_and_the_model_is_recorded(captioned, captioner):
    out, rows, report = captioned
    assert len(rows) == 3
    assert all(isinstance(row["caption"], str) and row["caption"] for row in rows)
    assert len({row["caption"] for row in rows}) > 1  # the caption depends on the image
    assert report["models"]["caption"] == {"method": "vlm", "model": str(captioner), "revision": "local",
                                           "device": "cpu", "dtype": "float32"}
    card = (out / "README.md").read_text()
    assert f"caption: vlm (`{captioner}` revision `local`, float32)" in card and "| `caption` |" in card
    ds = load_dataset(str(out), split="train")
    assert ds.column_names.index("caption") == ds.column_names.index("instruction") + 1


def test_the_same_build_gives_the_same_captions(captioned, captioner, faces, tmp_path):
    _, rows, _ = captioned
    code, again, _ = build(faces, tmp_path / "again", "--caption", "vlm", "--caption-model", str(captioner), *SHORT,
                           "--batch-size", "2")
    assert code == 0
    assert [row["caption"] for row in again] == [row["caption"] for row in rows]


def test_caption_none_leaves_the_column_empty_and_loads_no_model(faces, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("--caption none loaded a captioner")

    monkeypatch.setattr(Captioner, "__init__", never)
    code, rows, report = build(faces, tmp_path / "o", "--caption-model", "nobody/no-vlm")
    assert code == 0 and len(rows) == 3
    assert [row["caption"] for row in rows] == ["", "", ""]
    assert "caption" not in report["models"]


def _fails_in_one_line(faces, out, capsys, *flags: str) -> str:
    assert build(faces, out, "--caption", "vlm", *flags)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    assert not list(out.rglob("*.parquet"))  # stopped before any row was processed
    return err[-1]


def test_an_offline_id_exits_2_in_one_line(faces, tmp_path, capsys):
    line = _fails_in_one_line(faces, tmp_path / "o", capsys, "--caption-model", "nobody/no-vlm")
    assert line.startswith("relight-build: error: caption model nobody/no-vlm: HF_HUB_OFFLINE is set")


def test_a_folder_without_a_vlm_exits_2_in_one_line(faces, tmp_path, capsys):
    line = _fails_in_one_line(faces, tmp_path / "o", capsys, "--caption-model", str(tmp_path))
    assert line.startswith(f"relight-build: error: caption model {tmp_path}: ")


def test_a_processor_without_chat_template_exits_2_in_one_line(captioner, faces, tmp_path, capsys):
    folder = shutil.copytree(captioner, tmp_path / "no-template")
    (folder / "chat_template.jinja").unlink()
    line = _fails_in_one_line(faces, tmp_path / "o", capsys, "--caption-model", str(folder))
    assert line.endswith("its processor has no chat template (use an instruct VLM)")


def test_missing_package_support_exits_2_in_one_line(captioner, faces, tmp_path, capsys, monkeypatch):
    def old_transformers(*names):
        raise ImportError("transformers 4.30.0 has no AutoModelForImageTextToText")

    monkeypatch.setattr(loading, "import_transformers", old_transformers)
    monkeypatch.setattr(loading, "_LOADED", {})  # not the module's cached tiny captioner
    line = _fails_in_one_line(faces, tmp_path / "o", capsys, "--caption-model", str(captioner))
    assert "missing package support" in line and "AutoModelForImageTextToText" in line


def test_the_prompt_is_configurable_and_part_of_the_fingerprint():
    default = load_config("mvp")
    asked = load_config("mvp", overrides=["caption.prompt=Where does the light come from?"])
    assert asked.caption.prompt == "Where does the light come from?" and default.caption.method == "none"
    assert asked.fingerprint() != default.fingerprint()
    with pytest.raises(ConfigError, match="caption.prompt: must not be empty"):
        load_config("mvp", overrides=["caption.prompt=' '"])


def test_the_prompt_reaches_the_model(captioner):
    device = torch.device("cpu")
    images = torch.randint(0, 256, (2, 3, 64, 80), generator=torch.Generator(device="cpu").manual_seed(0),
                           device="cpu", dtype=torch.uint8)
    first = Captioner(str(captioner), device, torch.float32, "Describe the light.", 6, 2)
    other = Captioner(str(captioner), device, torch.float32, "Who is this?", 6, 1)
    assert "Describe the light." in first.text and "Who is this?" in other.text
    assert first(images) == first(images) and first(images) != other(images)


def test_caption_images_shrink_to_the_long_side():
    composite = torch.rand(2, 3, 100, 50, device="cpu", dtype=torch.float32)
    small = caption_images(composite, 40)
    assert small.shape == (2, 3, 40, 20) and small.dtype == torch.uint8
    assert caption_images(composite, 0).shape == (2, 3, 100, 50)


def test_on_the_fly_and_regenerated_rows_keep_the_stored_caption(captioner, faces, tmp_path):
    out = tmp_path / "compact"
    code, rows, _ = build(faces, out, "--caption", "vlm", "--caption-model", str(captioner), *SHORT,
                          "--layout", "compact")
    assert code == 0 and all(row["caption"] for row in rows)
    compact = load_dataset(str(out), split="train")
    pairs = relight_datasets.regenerate_pairs(compact, load_config("mvp", overrides=[
        f"caption.model={captioner}", "caption.method=vlm", "caption.max_new_tokens=6", "resolution=96",
        "segmentation.method=classical", "normals.method=classical"]))
    assert pairs["caption"] == compact["caption"] and "composite" in pairs.column_names
    relit = RelightOnTheFly("mvp", seed=1)(pairs[:2])
    assert relit["caption"] == pairs["caption"][:2]
