"""Resumable sharded builds, splits, bad input, the datasets builder and the Hub push (issue: production builds)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import save_resized_faces
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image

from relight_datasets.builder.hub import PushError, push_to_hub
from relight_datasets.builder.splits import SplitError, assign_split, parse_splits
from relight_datasets.cli import main
from relight_datasets.config import PRESETS
from relight_datasets.transforms.load import ImageSkip, decode_image

REPO = Path(__file__).resolve().parents[1]
RES = "128"


def rows_of(out: Path) -> list[dict]:
    """All rows of all shards, in shard order, with image bytes (comparable row by row)."""
    rows = []
    for path in sorted((out / "data").glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def build(source, out, *extra) -> int:
    return main(["--source", str(source), "--out", str(out), "--resolution", RES, "--quiet", *extra])


@pytest.fixture(scope="module")
def twelve_faces(tmp_path_factory, faces_dir) -> Path:
    return save_resized_faces(faces_dir, tmp_path_factory.mktemp("twelve"), 12, 160)


# ---------------------------------------------------------------------------------------------------------------- kill


def test_a_build_killed_with_sigkill_resumes_to_identical_rows(tmp_path, twelve_faces):
    reference = tmp_path / "reference"
    assert build(twelve_faces, reference, "--chunk-size", "2", "--batch-size", "2") == 0

    out = tmp_path / "killed"
    command = [sys.executable, str(REPO / "scripts" / "build.py"), "--source", str(twelve_faces), "--out", str(out),
               "--resolution", RES, "--chunk-size", "2", "--batch-size", "2", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / ".work").glob("chunk-*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished_before = len(list((out / ".work").glob("chunk-*.json")))
    assert 2 <= finished_before < 6, "the build was not interrupted part-way"
    assert not (out / "build_report.json").exists()
    assert (out / ".lock").is_file()  # left by the killed build; its lock died with it

    assert build(twelve_faces, out, "--chunk-size", "2", "--batch-size", "2") == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["resumed_rows"] == 2 * finished_before
    assert report["processed"] + sum(report["skipped"].values()) == report["attempted"] == 12
    assert rows_of(out) == rows_of(reference)
    assert not (out / ".work").exists()


def test_rerun_with_other_settings_is_refused_and_overwrite_rebuilds(tmp_path, twelve_faces, capsys):
    out = tmp_path / "out"
    assert build(twelve_faces, out, "--limit", "2") == 0
    capsys.readouterr()
    assert build(twelve_faces, out, "--limit", "2") == 0  # same settings: already complete, nothing redone
    assert "already holds this build" in capsys.readouterr().out
    assert build(twelve_faces, out, "--limit", "2", "--seed", "9") == 2
    error = capsys.readouterr().err
    assert "other settings (config.seed: 0 -> 9)" in error and "--overwrite" in error
    assert len(error.strip().splitlines()) == 1
    assert build(twelve_faces, out, "--limit", "2", "--seed", "9", "--overwrite") == 0
    assert json.loads((out / "build_report.json").read_text())["identity"]["config"]["seed"] == 9
    assert {r["seed"] for r in rows_of(out)} == {9}


def test_interrupted_build_with_other_settings_is_refused(tmp_path, twelve_faces, capsys):
    out = tmp_path / "out"
    (out / ".work").mkdir(parents=True)
    (out / ".work" / "manifest.json").write_text(json.dumps({"identity": {"config_fingerprint": "something-else"}}))
    assert build(twelve_faces, out, "--limit", "2") == 2
    error = capsys.readouterr().err
    assert "unfinished build with other settings" in error and "config_fingerprint: something-else -> unset" in error


# -------------------------------------------------------------------------------------------------------------- splits


def test_split_assignment_is_stable_under_limits_and_matches_the_fractions():
    splits = parse_splits("train=0.9,validation=0.05,test=0.05")
    ids = [f"{i:05d}.png" for i in range(4000)]
    first = [assign_split(i, splits) for i in ids[:50]]
    assert first == [assign_split(i, splits) for i in ids[:100]][:50]
    counts = {name: sum(assign_split(i, splits) == name for i in ids) / len(ids) for name in splits}
    assert counts["train"] == pytest.approx(0.9, abs=0.02) and counts["test"] == pytest.approx(0.05, abs=0.015)


@pytest.mark.parametrize("text", ["train=0.9,test=0.2", "train", "Train=1", "train=0.5,train=0.5", "train=-1", ""])
def test_bad_split_specs_are_one_line_errors(text):
    with pytest.raises(SplitError):
        parse_splits(text)


def test_rows_keep_their_split_between_limits(tmp_path, twelve_faces):
    spec = "train=0.5,validation=0.25,test=0.25"
    assert build(twelve_faces, tmp_path / "six", "--limit", "6", "--splits", spec) == 0
    assert build(twelve_faces, tmp_path / "twelve", "--limit", "12", "--splits", spec, "--min-shards", "1") == 0
    names = sorted(p.name for p in (tmp_path / "twelve" / "data").iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet",
                     "validation-00000-of-00001.parquet"]

    def split_of(out):
        return {row["image_id"]: split for split in ("train", "validation", "test")
                for row in load_dataset(str(out), split=split).select_columns(["image_id"])}

    six, twelve = split_of(tmp_path / "six"), split_of(tmp_path / "twelve")
    assert six and all(twelve[image_id] == split for image_id, split in six.items())
    assert len(set(twelve.values())) >= 2
    card = DatasetCard.load(tmp_path / "twelve" / "README.md").data.to_dict()
    report = json.loads((tmp_path / "twelve" / "build_report.json").read_text())
    assert {s["name"]: s["num_examples"] for s in card["dataset_info"]["splits"]} == report["splits"]


# ----------------------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_input_corpus(tmp_path_factory, faces_dir) -> tuple[Path, dict[str, str | None]]:
    """Every awkward file of the issue; value = expected skip reason, or None when it must be processed."""
    folder = tmp_path_factory.mktemp("corpus")
    face = Image.open(sorted(faces_dir.glob("*.png"))[0]).convert("RGB").resize((192, 192), Image.BICUBIC)
    expected: dict[str, str | None] = {}

    def save(name, image, reason=None, **kwargs):
        image.save(folder / name, **kwargs)
        expected[name] = reason

    (folder / "zero_bytes.png").write_bytes(b"")
    expected["zero_bytes.png"] = "unreadable_image"
    jpeg, png = io.BytesIO(), io.BytesIO()
    face.save(jpeg, "JPEG", quality=90)
    face.save(png, "PNG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "text.jpg").write_text("not an image at all\n")
    expected.update({"truncated.jpg": "unreadable_image", "truncated.png": "unreadable_image",
                     "text.jpg": "unreadable_image"})
    save("gray.png", face.convert("L"))
    rgba = face.convert("RGBA")
    alpha = np.full((192, 192), 255, np.uint8)
    alpha[:16, :16] = 0  # a transparent corner: must come out white
    rgba.putalpha(Image.fromarray(alpha))
    save("rgba.png", rgba)
    save("cmyk.jpg", face.convert("CMYK"), quality=92)
    sixteen = Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    save("sixteen_bit.png", sixteen)
    save("palette.png", face.quantize(256))
    rotated = face.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the viewer must rotate it 90 degrees clockwise (undoes ROTATE_90)
    save("exif_rotated.jpg", rotated, exif=exif, quality=92)
    save("one_pixel.png", Image.new("RGB", (1, 1), (128, 100, 90)), "too_small")
    save("bomb.png", Image.new("RGB", (400, 400), (30, 30, 30)), "decompression_bomb")
    frames = [face, Image.fromarray(np.random.default_rng(0).integers(0, 255, (192, 192, 3), dtype=np.uint8))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["animated.gif"] = None
    save("no_person.png", Image.new("RGB", (192, 192), (120, 160, 210)), "no_person")
    return folder, expected


def test_every_bad_input_is_processed_or_skipped_with_its_reason(tmp_path, bad_input_corpus, monkeypatch, faces_dir):
    folder, expected = bad_input_corpus
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        # the bomb is 400x400; lower PIL's limit so that it counts as one (PIL refuses above twice the limit)
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)
        assert main(["--source", str(folder), "--out", str(out), "--resolution", "192", "--quiet"]) == 0
    report = json.loads((out / "build_report.json").read_text())
    skipped = {row["image_id"]: row["reason"] for row in report["skipped_rows"]}
    rows = {row["image_id"]: row for row in load_dataset(str(out), split="train")}
    for name, reason in expected.items():
        if reason is None:
            assert name in rows, f"{name} should have been processed, got {skipped.get(name)}"
        else:
            assert skipped.get(name) == reason, f"{name}: expected skip {reason}, got {skipped.get(name)}"
    assert report["attempted"] == len(expected)
    assert report["processed"] + sum(report["skipped"].values()) == report["attempted"]
    assert report["processed"] == sum(reason is None for reason in expected.values())
    face = np.asarray(Image.open(sorted(faces_dir.glob("*.png"))[0]).convert("RGB").resize((192, 192)), dtype=int)
    assert np.asarray(rows["rgba.png"]["input"])[:16, :16].min() == 255  # alpha flattened on white
    upright = np.asarray(rows["exif_rotated.jpg"]["input"], dtype=int)
    assert upright.shape == face.shape and np.abs(upright - face).mean() < 12  # the orientation was applied
    sixteen = np.asarray(rows["sixteen_bit.png"]["input"], dtype=int)
    assert np.abs(sixteen - np.asarray(rows["gray.png"]["input"], dtype=int)).max() <= 1  # 16 bit scaled, not clipped
    assert np.abs(np.asarray(rows["animated.gif"]["input"], dtype=int) - face).mean() < 12  # the first frame


def test_undecodable_hub_bytes_are_skipped_the_same_way():
    for payload, reason in ((b"", "missing_image"), (b"GIF89a-garbage", "unreadable_image")):
        with pytest.raises(ImageSkip) as skip:
            decode_image({"bytes": payload, "path": None}, 256)
        assert skip.value.reason == reason


# --------------------------------------------------------------------------------------------- formats, shards, builder


def test_image_format_and_shard_size(tmp_path, twelve_faces):
    out = tmp_path / "out"
    assert build(twelve_faces, out, "--limit", "6", "--image-format", "webp", "--image-quality", "90",
                 "--max-shard-size", "64KB") == 0
    shards = sorted(p.name for p in (out / "data").iterdir())
    assert len(shards) > 1 and all(name.endswith(f"-of-{len(shards):05d}.parquet") for name in shards)
    rows = rows_of(out)
    assert len(rows) == 6 == len(load_dataset(str(out), split="train"))
    assert rows[0]["composite"]["bytes"][8:12] == b"WEBP" and rows[0]["input"]["bytes"][:4] == b"RIFF"
    assert rows[0]["mask"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n" and rows[0]["normals"]["bytes"][1:4] == b"PNG"


def test_png_codecs_write_the_same_pixels(tmp_path, twelve_faces):
    assert build(twelve_faces, tmp_path / "fpng", "--limit", "3") == 0
    assert build(twelve_faces, tmp_path / "zlib", "--limit", "3", "--png-codec", "zlib") == 0
    fast, small = rows_of(tmp_path / "fpng"), rows_of(tmp_path / "zlib")
    for name in ("input", "mask", "albedo", "degraded", "composite", "normals"):
        for a, b in zip(fast, small, strict=True):
            assert a[name]["bytes"][:8] == b[name]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
            pixels_a, pixels_b = (np.asarray(Image.open(io.BytesIO(r[name]["bytes"]))) for r in (a, b))
            assert pixels_a.dtype == np.uint8 and np.array_equal(pixels_a, pixels_b), name
    # Different writers for the RGB columns (fpng has no zlib level); masks are always written by zlib.
    assert fast[0]["composite"]["bytes"] != small[0]["composite"]["bytes"]
    assert fast[0]["mask"]["bytes"] == small[0]["mask"]["bytes"]


def test_encode_image_round_trips_and_names_a_missing_fpng(monkeypatch):
    from relight_datasets.builder import pipeline

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    gray = rgb[..., 1]
    for array in (rgb, rgb[::-1, ::2], gray):  # odd sizes, a non-contiguous view, mode L
        for codec in ("fpng", "zlib"):
            encoded = pipeline.encode_image(array, png_codec=codec)
            assert encoded["path"] is None
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded["bytes"]))), array)
    assert pipeline.encode_image(None, png_codec="fpng") is None

    pipeline.fpng_encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "fpng", None)  # import fpng -> ImportError
    try:
        with pytest.raises(RuntimeError, match=r"pip install fpng.*png_codec=zlib"):
            pipeline.encode_image(rgb, png_codec="fpng")
        assert pipeline.encode_image(rgb, png_codec="zlib")["bytes"][1:4] == b"PNG"
    finally:
        pipeline.fpng_encoder.cache_clear()


def test_datasets_builder_produces_the_cli_rows(tmp_path, twelve_faces):
    from relight_datasets.builder import RelightPairs

    assert build(twelve_faces, tmp_path / "cli", "--limit", "3") == 0
    builder = RelightPairs(config_name="mvp", source=str(twelve_faces), limit=3, overrides=(f"resolution={RES}",),
                           cache_dir=str(tmp_path / "cache"))
    assert str(builder.info.version) == "0.1.0" and {c.name for c in RelightPairs.BUILDER_CONFIGS} == set(PRESETS)
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    cli = load_dataset(str(tmp_path / "cli"), split="train")
    assert ds.features == cli.features
    assert ds["image_id"] == cli["image_id"] and ds["instruction"] == cli["instruction"]
    assert [np.asarray(im).tolist() for im in ds["composite"]] == [np.asarray(im).tolist() for im in cli["composite"]]


# ---------------------------------------------------------------------------------------------------------------- push


class RecordingHubApi:
    """Stands in for ``huggingface_hub.HfApi`` at the HTTP boundary: records every call, returns what the Hub would."""

    def __init__(self, existing_tags=()):
        self.calls = []
        self.tags = list(existing_tags)

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "list_repo_refs":
                return SimpleNamespace(tags=[SimpleNamespace(name=t) for t in self.tags])
            if name == "upload_folder":
                return SimpleNamespace(oid="abc123", commit_url="https://huggingface.co/datasets/org/pairs/commit/abc")
            return None
        return record

    def called(self, name):
        return [(args, kwargs) for n, args, kwargs in self.calls if n == name]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory, faces_dir) -> Path:
    out = tmp_path_factory.mktemp("push") / "pairs"
    assert main(["--source", str(faces_dir), "--out", str(out), "--limit", "2", "--resolution", RES, "--quiet"]) == 0
    return out


def test_push_uploads_the_folder_and_tags_the_version(small_build):
    api = RecordingHubApi()
    url = push_to_hub(small_build, "org/pairs", private=True, revision="v0-branch", api=api)
    assert url.endswith("/commit/abc")
    (create_args, create_kwargs), = api.called("create_repo")
    assert create_args == ("org/pairs",) and create_kwargs["repo_type"] == "dataset" and create_kwargs["private"]
    assert api.called("create_branch")[0][1]["branch"] == "v0-branch"
    (_, upload), = api.called("upload_folder")
    assert upload["folder_path"] == str(small_build) and upload["repo_type"] == "dataset"
    assert upload["revision"] == "v0-branch" and "0.1.0" in upload["commit_message"]
    (_, tag), = api.called("create_tag")
    assert tag["tag"] == "v0.1.0" and tag["revision"] == "abc123" and tag["repo_type"] == "dataset"
    assert len(load_dataset(str(small_build), split="train")) == 2  # what was uploaded loads


def test_pushing_an_existing_version_is_refused_unless_forced(small_build):
    api = RecordingHubApi(existing_tags=["v0.1.0"])
    with pytest.raises(PushError, match="already has dataset version 0.1.0"):
        push_to_hub(small_build, "org/pairs", api=api)
    assert not api.called("upload_folder")
    push_to_hub(small_build, "org/pairs", api=api, allow_existing_version=True)
    assert api.called("delete_tag") and api.called("create_tag")


def test_push_refuses_an_unfinished_folder(tmp_path):
    with pytest.raises(PushError, match="not a finished build"):
        push_to_hub(tmp_path, "org/pairs", api=RecordingHubApi())


def test_cli_pushes_a_complete_build_and_refuses_a_tagged_version_in_one_line(small_build, faces_dir, capsys,
                                                                                 monkeypatch):
    import huggingface_hub

    same_build = ["--source", str(faces_dir), "--out", str(small_build), "--limit", "2", "--resolution", RES, "--quiet"]
    api = RecordingHubApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the push checks it; every call goes to the recording API
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert main([*same_build, "--push-to-hub", "org/pairs"]) == 0
    assert "pushed to" in capsys.readouterr().out and api.called("create_tag")
    assert api.called("whoami")[0][1]["token"] == "hf_test_token"  # checked before the build

    tagged = RecordingHubApi(existing_tags=["v0.1.0"])
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: tagged)
    assert main([*same_build, "--push-to-hub", "org/pairs"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "already has dataset version 0.1.0" in error
    assert not tagged.called("upload_folder")
