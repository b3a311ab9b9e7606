"""End to end: the CLI on the real fixture faces, checked against the output contract (DESIGN section 2)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Image as ImageFeature
from datasets import List, Value, load_dataset
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image

import relight_datasets
from relight_datasets.cli import main

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 256
EXPECTED_COLUMNS = [
    "image_id", "source", "input", "mask", "albedo", "degraded", "composite", "normals", "segmentation_method",
    "segmentation_score", "mask_coverage", "normals_method", "albedo_method", "albedo_blend_ratio", "degradation_type",
    "light_setup", "light_direction", "ambient", "light_directions", "light_colors", "light_kelvin",
    "light_intensities", "sh_irradiance", "exposure", "shadow_pattern", "specular_intensity", "degradation_params",
    "instruction", "caption", "seed",
]


def run_build(source: str, out: Path, *extra: str) -> int:
    return main(["--source", source, "--out", str(out), "--resolution", str(RESOLUTION), "--quiet", *extra])


def table(out: Path):
    return pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()


@pytest.fixture(scope="module")
def built(tmp_path_factory, faces_dir):
    out = tmp_path_factory.mktemp("build") / "relight-pairs"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build.py"), "--source", f"folder:{faces_dir}", "--limit", "6",
         "--out", str(out), "--resolution", str(RESOLUTION), "--batch-size", "4", "--preset", "full"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_cli_prints_a_summary(built):
    _, result = built
    assert "6 of 6 images processed" in result.stdout
    assert "images/s" in result.stdout and "load_dataset" in result.stdout
    assert f"images {RESOLUTION}x{RESOLUTION}" in result.stdout and "kB per row (full layout)" in result.stdout


def test_version_and_help_grouped_by_topic_with_examples():
    version = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"relight-build {relight_datasets.__version__}"
    shown = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--help"],
                           capture_output=True, text=True, timeout=60).stdout
    for topic in ("source and output:", "what the pipeline does:", "models (", "performance:", "stored files:",
                  "Hugging Face Hub:", "failures and messages:", "examples:"):
        assert topic in shown
    assert shown.index("\n  --layout") > shown.index("stored files:") > shown.index("\n  --batch-size")


def test_inputs_smaller_than_the_resolution_are_named_and_their_real_size_recorded(tmp_path, faces_dir):
    out = tmp_path / "small"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build.py"), "--source", f"folder:{faces_dir}", "--limit", "1",
         "--out", str(out), "--resolution", "1024", "--segmenter", "classical", "--normals", "classical", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "smaller than --resolution 1024" in result.stderr and "images 512x512" in result.stdout
    report = json.loads((out / "build_report.json").read_text())
    assert report["image_sizes"]["long_side"] == {"min": 512, "median": 512, "max": 512}
    assert "images 512x512 (resolution setting: long side at most 1024 px)" in (out / "README.md").read_text()


def test_output_folder_layout(built):
    out, _ = built
    assert (out / "README.md").is_file() and (out / "preview.png").is_file() and (out / "build_report.json").is_file()
    # 6 rows, at least 8 shards asked for by default: one row per shard, so 6 DataLoader workers could stream them
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"train-{i:05d}-of-00006.parquet" for i in range(6)]
    assert not (out / ".work").exists()
    preview = Image.open(out / "preview.png")
    assert preview.width == 5 * 192 and preview.height >= 6 * 192


def test_dataset_loads_with_no_script_and_matches_the_contract(built, faces_dir):
    out, _ = built
    ds = load_dataset(str(out), split="train")
    assert ds.column_names == EXPECTED_COLUMNS
    assert len(ds) == 6
    # the light labels are numbers the Hub viewer can chart, not strings
    assert ds.features["sh_irradiance"] == List(Value("float32"), length=27)
    assert ds.features["light_colors"] == List(List(Value("float32"), length=3), length=3)
    for column in ("ambient", "exposure", "specular_intensity"):
        assert ds.features[column] == Value("float32")
    for column in ("input", "mask", "albedo", "degraded", "composite", "normals"):
        assert isinstance(ds.features[column], ImageFeature)
    expected_ids = sorted(p.name for p in faces_dir.glob("*.png"))[:6]
    assert ds["image_id"] == expected_ids
    assert ds["normals_method"].count("face_mesh") >= 5  # the offline default renders the fixtures' faces
    for row in ds:
        size = row["input"].size
        assert max(size) == RESOLUTION
        assert row["mask"].mode == "L"
        for column in ("mask", "albedo", "degraded", "composite", "normals"):
            assert row[column].size == size
        mask = np.asarray(row["mask"])
        assert set(np.unique(mask)) <= {0, 255}
        assert row["mask_coverage"] == pytest.approx((mask == 255).mean(), abs=1e-3)
        assert 0.05 < row["mask_coverage"] < 0.95
        assert row["segmentation_method"] == "mediapipe" and 0 <= row["segmentation_score"] <= 1
        assert row["normals_method"] in ("face_mesh", "mask_inflation")  # mask_inflation: no face found
        assert row["albedo_method"] == "retinex" and 0.15 <= row["albedo_blend_ratio"] <= 0.25
        assert row["degradation_type"] in {"soft_shading", "hard_shadow", "specular"}
        assert math.isclose(sum(v * v for v in row["light_direction"]), 1.0, rel_tol=1e-4)
        params = json.loads(row["degradation_params"])
        assert {"lights", "environment", "pattern", "specular"} <= set(params)
        assert row["light_setup"] in {"single", "two_point", "three_point", "outdoor", "overcast", "indoor"}
        if row["light_setup"] != "overcast":  # the key light's slot
            assert row["light_directions"][0] == pytest.approx(row["light_direction"])
            assert 2000 < row["light_kelvin"][0] < 8000 and row["light_intensities"][0] > 0
            assert row["light_direction"][2] >= math.sin(math.radians(10)) - 1e-4  # elevation in [10, 80] degrees
        assert len(row["sh_irradiance"]) == 27 and row["exposure"] > 0
        assert row["shadow_pattern"] == (params["pattern"]["family"] if params["pattern"] else "")
        assert " from " in row["instruction"] and "shadows" in row["instruction"]
        assert row["caption"] == ""  # captions are off by default
        assert row["seed"] == 0
        # composite equals the input exactly outside the mask (background mode "original")
        outside = mask == 0
        assert np.array_equal(np.asarray(row["composite"])[outside], np.asarray(row["input"])[outside])
        # albedo and degraded are black outside the mask, and the person actually changed
        assert np.asarray(row["degraded"])[outside].max() == 0
        inside = mask == 255
        diff = np.abs(np.asarray(row["composite"], dtype=int) - np.asarray(row["input"], dtype=int))[inside]
        assert diff.mean() > 3


def test_build_report(built):
    out, _ = built
    report = json.loads((out / "build_report.json").read_text())
    assert report["attempted"] == 6 and report["processed"] == 6 and report["skipped"] == {}
    assert report["processed"] + sum(report["skipped"].values()) == report["attempted"]
    assert set(report["methods"]) == {"segmentation_method", "normals_method", "albedo_method", "degradation_type",
                                      "light_setup"}
    assert sum(report["methods"]["degradation_type"].values()) == 6
    assert sum(report["methods"]["light_setup"].values()) == 6
    assert {"model_load", "decode", "segmentation", "normals", "albedo", "encode", "write"} <= set(report["timings"])
    assert all(seconds >= 0 for seconds in report["timings"].values())
    assert report["version"] == "0.1.0" and len(report["config_fingerprint"]) == 16


def test_dataset_card_yaml(built):
    out, _ = built
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    report = json.loads((out / "build_report.json").read_text())
    assert data["version"] == "0.1.0"
    assert data["relight_datasets"]["config_fingerprint"] == report["config_fingerprint"]
    assert data["relight_datasets"]["config"]["degradation"]["weights"]["specular"] == 0.2
    assert data["license"] and "image-to-image" in data["task_categories"]
    assert data["size_categories"] == ["n<1K"] or data["size_categories"] == "n<1K"
    names = [f["name"] for f in data["dataset_info"]["features"]]
    assert names == EXPECTED_COLUMNS
    assert data["dataset_info"]["splits"][0]["name"] == "train"
    assert data["dataset_info"]["splits"][0]["num_examples"] == 6


def test_rebuilding_into_a_folder_is_never_served_from_a_stale_cache(tmp_path, faces_dir):
    """Two builds whose cards are identical (same config, same counts) must still load their own rows."""
    first, second = copy_faces(faces_dir, tmp_path / "one", 1), tmp_path / "two"
    second.mkdir()
    shutil.copy(sorted(faces_dir.glob("*.png"))[5], second / "other.png")
    for folder in (first, second):
        assert run_build(f"folder:{folder}", tmp_path / f"build-{folder.name}" / "out") == 0
    ids = [load_dataset(str(tmp_path / f"build-{name}" / "out"), split="train")["image_id"] for name in ("one", "two")]
    assert ids[0] != ids[1]


def copy_faces(faces_dir: Path, target: Path, count: int) -> Path:
    target.mkdir(parents=True)
    for path in sorted(faces_dir.glob("*.png"))[:count]:
        shutil.copy(path, target / path.name)
    return target


def test_same_seed_gives_identical_rows_and_batch_size_does_not_matter(tmp_path, faces_dir):
    source = f"folder:{faces_dir}"
    assert run_build(source, tmp_path / "a", "--limit", "4", "--batch-size", "8") == 0
    assert run_build(source, tmp_path / "b", "--limit", "4", "--batch-size", "8") == 0
    assert run_build(source, tmp_path / "c", "--limit", "4", "--batch-size", "1") == 0
    assert run_build(source, tmp_path / "d", "--limit", "4", "--batch-size", "8", "--seed", "5") == 0
    rows_a, rows_b, rows_c, rows_d = (table(tmp_path / name) for name in "abcd")
    assert rows_a == rows_b
    assert rows_a == rows_c
    assert [r["composite"] for r in rows_a] != [r["composite"] for r in rows_d]
    assert [r["input"] for r in rows_a] == [r["input"] for r in rows_d]


def test_concurrent_batch_threads_give_the_same_rows_in_order(tmp_path, faces_dir, monkeypatch):
    import torch

    from relight_datasets.builder import chunks

    source = f"folder:{faces_dir}"
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)  # two batch threads of one torch thread each, even on a one-core machine
    try:
        assert run_build(source, tmp_path / "two", "--limit", "7", "--batch-size", "2") == 0
        assert torch.get_num_threads() == 2, "the build must restore torch's thread count"
        monkeypatch.setattr(chunks, "CPU_BATCH_THREADS", 1)
        assert run_build(source, tmp_path / "one", "--limit", "7", "--batch-size", "2") == 0
    finally:
        torch.set_num_threads(threads_before)
    reports = [json.loads((tmp_path / name / "build_report.json").read_text()) for name in ("two", "one")]
    assert [r["batch_threads"] for r in reports] == [2, 1]
    two, one = table(tmp_path / "two"), table(tmp_path / "one")
    assert [r["image_id"] for r in two] == sorted(p.name for p in faces_dir.glob("*.png"))[:7]
    assert two == one


@pytest.mark.parametrize(("mode", "value"), [("gray", 128), ("black", 0)])
def test_background_modes_end_to_end(tmp_path, faces_dir, mode, value):
    assert run_build(f"folder:{faces_dir}", tmp_path / mode, "--limit", "1", "--background", mode) == 0
    row = load_dataset(str(tmp_path / mode), split="train")[0]
    outside = np.asarray(row["mask"]) == 0
    assert np.all(np.asarray(row["composite"])[outside] == value)


def test_unreadable_files_are_skipped_with_a_reason(tmp_path, faces_dir):
    folder = copy_faces(faces_dir, tmp_path / "in", 2)
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / sorted(p.name for p in folder.iterdir() if p.stat().st_size > 1000)[0]).read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (8, 8), (200, 150, 120)).save(folder / "tiny.png")
    Image.new("RGB", (256, 256), (90, 140, 200)).save(folder / "sky.png")
    out = tmp_path / "out"
    assert run_build(f"folder:{folder}", out) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["attempted"] == 7 and report["processed"] == 2
    assert report["skipped"] == {"no_person": 1, "too_small": 1, "unreadable_image": 3}
    assert {r["image_id"]: r["reason"] for r in report["skipped_rows"]}["sky.png"] == "no_person"
    assert len(load_dataset(str(out), split="train")) == 2


def test_source_and_output_errors_exit_2(tmp_path, faces_dir, capsys):
    assert main(["--source", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["--source", f"folder:{faces_dir}", "--out", str(tmp_path / "full"), "--limit", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").exists()


def test_csv_source_uses_paths_relative_to_the_csv(tmp_path, faces_dir):
    folder = copy_faces(faces_dir, tmp_path / "imgs", 2)
    names = sorted(p.name for p in folder.iterdir())
    (tmp_path / "list.csv").write_text("image_path\n" + "\n".join(f"imgs/{n}" for n in names) + "\n")
    assert run_build(f"csv:{tmp_path / 'list.csv'}", tmp_path / "out") == 0
    ds = load_dataset(str(tmp_path / "out"), split="train")
    assert ds["image_id"] == [f"imgs/{n}" for n in names]


def test_hub_source_fails_fast_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--source", "hf:someone/portraits", "--out", str(tmp_path / "o")]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_card_names_the_licence_and_the_source_without_local_paths(built, faces_dir):
    out, _ = built
    text = (out / "README.md").read_text()
    data = DatasetCard.load(out / "README.md").data.to_dict()
    assert data["license"] == "unknown"  # a local folder: the tool cannot know its licence
    assert "pass `--license`" in text
    assert str(faces_dir) not in text and str(faces_dir.parent) not in text
    assert data["relight_datasets"]["source"] == "a local folder of images"
    for section in ("## Licence", "## Personal data", "## Biases and limitations", "## Citation"):
        assert section in text
    assert "ORG/NAME" in text and "RelightOnTheFly" in text
    # the YAML is valid card metadata: it survives a round trip through huggingface_hub's own class
    assert DatasetCardData(**data).to_dict() == data


def test_card_with_a_repo_a_given_licence_and_an_ffhq_source():
    from relight_datasets.builder.card import build_card, public_source_name, resolve_license
    from relight_datasets.config import load_config

    ffhq_id, ffhq_name, ffhq_link = resolve_license("ffhq", "")
    assert ffhq_id == "cc-by-nc-sa-4.0" and "NonCommercial-ShareAlike 4.0" in ffhq_name
    assert ffhq_link == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    assert resolve_license("hf:bitmind/ffhq:train", "")[0] == "cc-by-nc-sa-4.0"
    assert resolve_license("ffhq", "cc-by-4.0") == ("cc-by-4.0", None, None)
    assert resolve_license("folder:/home/me/photos", "") == ("unknown", None, None)
    assert public_source_name("folder:/home/me/photos") == "a local folder of images"
    assert public_source_name("csv:/home/me/list.csv") == "a local list of image files (CSV)"
    assert public_source_name("hf:someone/portraits:train") == "the Hub dataset `someone/portraits:train`"
    report = {"source": "ffhq", "processed": 3, "attempted": 3, "splits": {"train": 3}, "split_bytes": {"train": 10},
              "empty_splits": [], "skipped": {}, "models": {}, "config_fingerprint": "0" * 16, "bytes_per_row": 3000,
              "image_sizes": {"long_side": {"min": 512, "median": 512, "max": 512}, "most_common": [["512x512", 3]]}}
    card = build_card(load_config("mvp"), report, repo_id="my-org/relight-pairs")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-sa-4.0" and data["pretty_name"] == "Relight Pairs"
    assert 'load_dataset("my-org/relight-pairs"' in card.text and "ORG/NAME" not in card.text
    assert "creativecommons.org/licenses/by-nc-sa/4.0" in card.text and "karras2019style" in card.text
