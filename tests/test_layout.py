"""``--layout compact``: a build without ``degraded`` / ``composite``, which ``regenerate_pairs`` remakes bit for bit
from the stored columns (compared with a full build of the same images)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from huggingface_hub import DatasetCard
from PIL import Image

import relight_datasets
from relight_datasets.builder.features import FEATURES, REGENERATED_COLUMNS

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--limit", "4", "--resolution", "256", "--batch-size", "2", "--quiet", "--preset", "full", "--seed", "7"]


def build(faces_dir: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build.py"), "--source", f"folder:{faces_dir}",
                             "--out", str(out), *COMMON, *flags], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def builds(tmp_path_factory, faces_dir) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("layouts")
    # one shard each: the comparison is of the rows' bytes, not of each Parquet file's fixed overhead (about 13 kB)
    full = build(faces_dir, root / "full", "--min-shards", "1")
    compact = build(faces_dir, root / "compact", "--layout", "compact", "--min-shards", "1")
    return {"full": (root / "full", full.stdout), "compact": (root / "compact", compact.stdout)}


def test_a_compact_build_stores_no_relit_images_and_says_so(builds):
    out, stdout = builds["compact"]
    names = pq.read_schema(next((out / "data").glob("*.parquet"))).names
    assert not set(REGENERATED_COLUMNS) & set(names)
    assert names == [name for name in FEATURES if name not in REGENERATED_COLUMNS]
    report = json.loads((out / "build_report.json").read_text())
    assert report["layout"] == "compact" and "compact layout" in stdout and "kB per row" in stdout
    card = DatasetCard.load(out / "README.md")
    stored = [feature["name"] for feature in card.data.to_dict()["dataset_info"]["features"]]
    assert stored == names and "regenerate_pairs" in card.text
    assert Image.open(out / "preview.png").width == 5 * 192  # the sheet shows regenerated pairs too


def test_compact_rows_take_at_most_55_percent_of_the_full_bytes(builds):
    full = json.loads((builds["full"][0] / "build_report.json").read_text())
    compact = json.loads((builds["compact"][0] / "build_report.json").read_text())
    assert full["layout"] == "full"
    assert compact["bytes_per_row"] <= 0.55 * full["bytes_per_row"]


def test_regenerated_pairs_equal_the_full_build_bit_for_bit(builds):
    full = load_dataset(str(builds["full"][0]), split="train")
    compact = load_dataset(str(builds["compact"][0]), split="train")
    config = DatasetCard.load(builds["compact"][0] / "README.md").data.to_dict()["relight_datasets"]["config"]
    regenerated = relight_datasets.regenerate_pairs(compact, config)
    assert regenerated.column_names == full.column_names
    assert regenerated.features == full.features
    for ours, theirs in zip(regenerated, full, strict=True):
        for name in full.column_names:
            if isinstance(theirs[name], Image.Image):
                assert np.array_equal(np.asarray(ours[name]), np.asarray(theirs[name])), (theirs["image_id"], name)
            else:
                assert ours[name] == theirs[name], (theirs["image_id"], name)


def test_regenerate_pairs_refuses_a_dataset_that_is_not_a_build(builds):
    compact = load_dataset(str(builds["compact"][0]), split="train").remove_columns(["albedo"])
    with pytest.raises(ValueError, match="lacks albedo"):
        relight_datasets.regenerate_pairs(compact)


def test_the_python_api_returns_compact_rows_too(face_paths):
    pairs = relight_datasets.relight(face_paths[:2], resolution=96, segmenter="classical", normals="classical",
                                     overrides={"output.layout": "compact"}, load_from_cache_file=False)
    assert not set(REGENERATED_COLUMNS) & set(pairs.column_names) and len(pairs) == 2
    assert set(relight_datasets.regenerate_pairs(pairs).column_names) >= set(REGENERATED_COLUMNS)


def _worker_id(row: dict) -> dict:
    """The DataLoader worker that read ``row`` (module level: the workers import it)."""
    from torch.utils.data import get_worker_info

    return {"worker": get_worker_info().id}


def test_every_dataloader_worker_of_a_streaming_reader_gets_shards(tmp_path, faces_dir):
    from torch.utils.data import DataLoader

    out = tmp_path / "streamed"
    build(faces_dir, out, "--resolution", "96")  # the default --min-shards 8
    report = json.loads((out / "build_report.json").read_text())
    assert [shard["rows"] for shard in report["shards"]] == [1, 1, 1, 1]  # 4 rows, min 8 shards: one row each
    assert sum(shard["bytes"] for shard in report["shards"]) == sum(p.stat().st_size for p in (out / "data").iterdir())
    streamed = load_dataset(str(out), split="train", streaming=True)
    assert streamed.n_shards == 4
    readers = streamed.select_columns(["image_id"]).map(_worker_id)
    loader = DataLoader(readers, batch_size=None, num_workers=2)
    seen = [(row["image_id"], row["worker"]) for row in loader]
    assert sorted(image_id for image_id, _ in seen) == sorted(load_dataset(str(out), split="train")["image_id"])
    assert {worker for _, worker in seen} == {0, 1}
