"""``relight_datasets.relight`` and the stages as ``Dataset.map`` functions, checked against the CLI's rows.

Four fixture faces at 128 px plus a blank image (``no_person``) and a corrupt file (``unreadable_image``), built
once by the CLI; every way of running the stages here must give that build's rows, pixel for pixel.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Features, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from relight_datasets import relight
from relight_datasets.api import source_rows, stage_features
from relight_datasets.builder.chunks import torch_threads
from relight_datasets.builder.features import FEATURES
from relight_datasets.builder.pipeline import RelightPipeline
from relight_datasets.cli import main
from relight_datasets.config import load_config
from relight_datasets.transforms.base import SKIP_COLUMN

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 128
WEIGHT_FREE = ["segmentation.method=classical", "normals.method=classical"]
FACES = 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory, face_paths) -> Path:
    """A folder of 128 px faces, a blank image and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    for path in face_paths[:FACES]:
        Image.open(path).convert("RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.LANCZOS).save(
            folder / path.name)
    Image.new("RGB", (RESOLUTION, RESOLUTION), (128, 128, 128)).save(folder / "blank.png")
    (folder / "corrupt.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def cli_build(tmp_path_factory, photos) -> tuple[Dataset, list[dict]]:
    """The CLI's rows for ``photos`` and its skipped rows (``image_id``, ``reason``)."""
    out = tmp_path_factory.mktemp("cli") / "pairs"
    overrides = [flag for setting in WEIGHT_FREE for flag in ("--set", setting)]
    assert main(["--source", f"folder:{photos}", "--out", str(out), "--resolution", str(RESOLUTION), "--quiet",
                 "--batch-size", "2", *overrides]) == 0
    report = json.loads((out / "build_report.json").read_text())
    return load_dataset(str(out), split="train"), report["skipped_rows"]


def photo_dataset(photos: Path) -> Dataset:
    """The photos as a user's dataset: an image column (not named ``input``) and a column of file names."""
    paths = sorted(photos.glob("*.png"))
    return Dataset.from_dict({"file": [p.name for p in paths], "photo": [str(p) for p in paths]}).cast_column(
        "photo", ImageFeature())


def assert_same_rows(actual: Dataset, expected: Dataset, columns: list[str]) -> None:
    """Same row count, and per row the same decoded pixels (and mode) of every image column and the same value of
    every other column in ``columns``."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        for name in columns:
            if isinstance(FEATURES[name], ImageFeature):
                assert got[name].mode == want[name].mode, (want["image_id"], name)
                assert np.array_equal(np.asarray(got[name]), np.asarray(want[name])), (want["image_id"], name)
            else:
                assert got[name] == want[name], (want["image_id"], name)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_relight_gives_the_cli_rows(photos, cli_build, num_proc, caplog):
    expected, expected_skips = cli_build
    with caplog.at_level(logging.WARNING, logger="relight_datasets"):
        pairs, skipped = relight(photo_dataset(photos), id_column="file", source="folder",
                                 resolution=RESOLUTION, overrides=WEIGHT_FREE, num_proc=num_proc, batch_size=2,
                                 return_skipped=True)
    assert pairs.features == FEATURES
    assert len(expected) == FACES
    assert_same_rows(pairs, expected, list(FEATURES))
    assert skipped.to_list() == [{"image_id": row["image_id"], SKIP_COLUMN: row["reason"]} for row in expected_skips]
    assert sorted(skipped[SKIP_COLUMN]) == ["no_person", "unreadable_image"]
    assert f"{FACES} of {FACES + 2} images processed (skipped: no_person 1, unreadable_image 1)" in caplog.text


def test_a_list_of_paths_gives_the_cli_rows(photos, cli_build, monkeypatch):
    expected, _ = cli_build
    monkeypatch.chdir(photos)  # relative paths: the ids the CLI gives a folder's files
    pairs = relight(sorted(Path().glob("*.png")), source="folder", resolution=RESOLUTION,
                    segmenter="classical", normals="classical")
    assert_same_rows(pairs, expected, list(FEATURES))


def test_a_list_of_pil_images_is_identified_by_pixels(photos, cli_build):
    expected, _ = cli_build
    images = [Image.open(path) for path in sorted(photos.glob("*.png")) if path.name != "corrupt.png"]
    forward = relight(images, resolution=RESOLUTION, overrides=dict.fromkeys(
        ("segmentation.method", "normals.method"), "classical"))
    backward = relight(images[::-1], resolution=RESOLUTION, overrides=WEIGHT_FREE)
    assert len(forward) == FACES and all(re.fullmatch(r"[0-9a-f]{16}", image_id) for image_id in forward["image_id"])
    # An image's row depends on its pixels, not on its place in the list.
    by_id = {row["image_id"]: row for row in backward}
    for row in forward:
        twin = by_id[row["image_id"]]
        for name in ("input", "mask", "composite"):
            assert np.array_equal(np.asarray(row[name]), np.asarray(twin[name]))
        assert row["degradation_params"] == twin["degradation_params"]
    # The decoded inputs are the CLI's: the images were passed on losslessly.
    assert sorted(np.asarray(row["input"]).tobytes() for row in forward) == sorted(
        np.asarray(row["input"]).tobytes() for row in expected)


@pytest.mark.parametrize(("num_proc", "format_type"), [(1, None), (2, None), (1, "numpy")])
def test_stage_by_stage_dataset_map_gives_the_cli_rows(photos, cli_build, num_proc, format_type):
    expected, expected_skips = cli_build
    config = load_config("mvp", overrides=[*WEIGHT_FREE, f"resolution={RESOLUTION}"])
    rows = source_rows(photo_dataset(photos), id_column="file", source="folder")
    # Dataset.map forks its workers (num_proc=1 too); a forked child of a process that has run torch's GNU OpenMP
    # threads hangs in its first parallel region unless torch runs one thread there (the README says so).
    with torch_threads(1):
        for stage in RelightPipeline(config, device="cpu").stages:
            rows = rows.with_format(format_type).map(stage, batched=True, with_rank=True, batch_size=2,
                                                     num_proc=num_proc,
                                                     features=Features({**rows.features, **stage_features(stage)}))
    rows = rows.with_format(None)
    assert set(rows.column_names) == {*FEATURES, SKIP_COLUMN} - {"seed"}
    reasons = rows[SKIP_COLUMN]
    assert [(row["image_id"], row["reason"]) for row in expected_skips] == [
        (image_id, reason) for image_id, reason in zip(rows["image_id"], reasons, strict=True) if reason]
    kept = rows.select([index for index, reason in enumerate(reasons) if not reason])
    assert_same_rows(kept, expected, [name for name in FEATURES if name != "seed"])


def test_a_numpy_formatted_dataset_gives_the_cli_rows(photos, cli_build):
    expected, _ = cli_build
    pairs = relight(photo_dataset(photos).with_format("numpy"), id_column="file", source="folder",
                    resolution=RESOLUTION, overrides=WEIGHT_FREE)
    assert_same_rows(pairs, expected, list(FEATURES))


def test_an_image_that_breaks_the_pipeline_costs_only_its_own_row(photos, cli_build, pipeline_failing_for, caplog):
    """Injected fault: the real pipeline raises whenever one id is in its batch; the batch is retried row by row."""
    expected, _ = cli_build
    bad = expected[1]["image_id"]
    pipeline_failing_for(bad)
    with caplog.at_level(logging.WARNING, logger="relight_datasets"):
        pairs, skipped = relight(photo_dataset(photos), id_column="file", source="folder",
                                 resolution=RESOLUTION, overrides=WEIGHT_FREE, batch_size=3, return_skipped=True)
    assert {"image_id": bad, SKIP_COLUMN: "processing_error"} in skipped.to_list()
    assert_same_rows(pairs, expected.filter(lambda row: row["image_id"] != bad), list(FEATURES))
    assert f"{bad}: skipped (ValueError: cannot segment {bad})" in caplog.text
    assert "processing_error 1" in caplog.text


def test_unusable_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^relight: the dataset has no image column \(columns: text\)") as error:
        relight(Dataset.from_dict({"text": ["a portrait"]}))
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no images to process"):
        relight([])
    with pytest.raises(TypeError, match="expected a datasets.Dataset or a list"):
        relight("portrait.png")


def test_a_changed_config_does_not_read_stale_rows_from_the_cache(photos, tmp_path):
    """On a dataset with cache files, ``Dataset.map`` caches its result; a new seed must not get the old rows."""
    photo_dataset(photos).save_to_disk(str(tmp_path / "photos"))
    on_disk = load_from_disk(str(tmp_path / "photos"))
    options = {"id_column": "file", "resolution": RESOLUTION, "overrides": WEIGHT_FREE}
    first = relight(on_disk, seed=0, **options)
    assert first.cache_files  # the map wrote (and could read back) a cache file
    other = relight(on_disk, seed=1, **options)
    again = relight(on_disk, seed=0, **options)
    assert first["degradation_params"] != other["degradation_params"]
    assert again["degradation_params"] == first["degradation_params"] and again.cache_files == first.cache_files


def readme_python_api_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_examples_run(photos, monkeypatch, tmp_path, capsys):
    relight_block, stages_block = readme_python_api_blocks()
    monkeypatch.chdir(tmp_path)
    results = []
    for block in (relight_block, stages_block):
        namespace: dict = {}
        exec(compile(block.replace("/path/to/portraits", str(photos)), "README.md", "exec"), namespace)
        results.append(namespace)
    printed = capsys.readouterr().out
    assert f"num_rows: {FACES}" in printed and "'skip_reason': 'no_person'" in printed
    assert results[0]["pairs"].features == FEATURES
    stage_rows = results[1]["rows"]
    assert len(stage_rows) == FACES + 2 and SKIP_COLUMN in stage_rows.column_names
