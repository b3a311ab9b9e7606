"""Sizes, dtypes and layouts the stages meet on a GPU, handled explicitly and checked on a CPU (issue 13 item 5):
batches of mixed image sizes, bf16 model outputs meeting float32 ops, channels-last tensors and non-contiguous
arrays; and the column forms a ``Dataset.map`` batch may hold (numpy-formatted batches, nested lists)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_rgb
from device_discipline import device_discipline
from PIL import Image

from relight_datasets.builder.pipeline import RelightPipeline
from relight_datasets.config import load_config
from relight_datasets.models.depth import DepthEstimator
from relight_datasets.testing import make_tiny_checkpoints
from relight_datasets.transforms import (
    AlbedoStage,
    DeviceBatch,
    NormalsStage,
    PairedTransform,
    RelightBatch,
    RelightOnTheFly,
    RelightStage,
)
from relight_datasets.transforms.base import IMAGE_COLUMNS, SKIP_COLUMN

WEIGHT_FREE = ["segmentation.method=classical", "normals.method=classical"]


def png(image: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def source_batch(images: dict[str, np.ndarray]) -> dict[str, list]:
    return {"image_id": list(images), "source": ["test"] * len(images), "input": [png(a) for a in images.values()]}


@pytest.fixture(scope="module")
def pipeline() -> RelightPipeline:
    return RelightPipeline(load_config("mvp", overrides=["resolution=160", *WEIGHT_FREE]), "cpu")


@pytest.fixture(scope="module")
def mixed_sizes(face_paths) -> dict[str, np.ndarray]:
    """Four faces: two at 128 x 128, one at 160 x 120 (portrait), one at 96 x 96."""
    sizes = [(128, 128), (128, 128), (120, 160), (96, 96)]
    return {path.name: np.asarray(Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS))
            for path, size in zip(face_paths[:4], sizes, strict=True)}


@pytest.fixture(scope="module")
def built_rows(pipeline, mixed_sizes) -> dict[str, list]:
    return pipeline(source_batch(mixed_sizes))


def test_a_batch_of_mixed_sizes_gives_the_rows_of_separate_batches(pipeline, mixed_sizes, built_rows):
    assert not any(built_rows[SKIP_COLUMN]), built_rows[SKIP_COLUMN]
    for index, (image_id, image) in enumerate(mixed_sizes.items()):
        alone = pipeline(source_batch({image_id: image}))
        for name, values in built_rows.items():
            assert alone[name][0] == values[index], (image_id, name)
        decoded = Image.open(io.BytesIO(built_rows["composite"][index]["bytes"]))
        assert decoded.size == image.shape[1::-1]


def test_mixed_sizes_and_a_dropped_row_under_device_discipline(pipeline, mixed_sizes, built_rows):
    """Grouping by size, dropping a row a stage skips (indexing on the device) and the copies in and out: every
    tensor made with its device, no call mixing devices, and the same rows as without the harness."""
    blank = np.full((128, 128, 3), 128, np.uint8)  # nobody there: skipped by segmentation, inside a group of two
    batch = source_batch({**mixed_sizes, "blank.png": blank})
    expected = pipeline(batch)
    assert expected[SKIP_COLUMN] == ["", "", "", "", "no_person"]
    with device_discipline(default_device="meta"):
        got = pipeline(batch)
    assert got == expected
    assert {name: values[:4] for name, values in got.items()} == built_rows


def test_the_map_path_takes_numpy_formatted_and_list_columns(built_rows):
    """A ``with_format("numpy")`` batch (arrays, ``skip_reason`` a numpy array) and a batch whose images are nested
    lists (an image column written without an ``Image`` feature) give the same albedo as PIL images do."""
    config = load_config("mvp", overrides=["resolution=160", *WEIGHT_FREE])
    decoded = {name: [np.asarray(Image.open(io.BytesIO(v["bytes"]))) for v in built_rows[name]]
               for name in ("input", "mask")}
    reasons = ["", "", "", "no_person"]
    as_pil = {"image_id": built_rows["image_id"], SKIP_COLUMN: reasons,
              **{name: [Image.fromarray(a) for a in arrays] for name, arrays in decoded.items()}}
    as_numpy = {"image_id": np.array(built_rows["image_id"]), SKIP_COLUMN: np.array(reasons), **decoded}
    as_lists = {**as_pil, **{name: [a.tolist() for a in arrays] for name, arrays in decoded.items()}}
    expected = AlbedoStage(config)(as_pil)
    assert expected[SKIP_COLUMN] == reasons and expected["albedo"][3] is None
    for batch in (as_numpy, as_lists):
        got = AlbedoStage(config)(batch)
        assert got[SKIP_COLUMN] == reasons
        for row in range(3):
            np.testing.assert_array_equal(got["albedo"][row], expected["albedo"][row])
    stored = np.asarray(Image.open(io.BytesIO(built_rows["albedo"][0]["bytes"])))
    np.testing.assert_array_equal(expected["albedo"][0], stored)


def test_channels_last_and_non_contiguous_inputs_give_identical_results(built_rows):
    config = load_config("mvp", overrides=["resolution=160"])
    rows = [0, 1]  # the two 128 px rows
    arrays = {name: [np.asarray(Image.open(io.BytesIO(built_rows[name][r]["bytes"]))) for r in rows]
              for name in IMAGE_COLUMNS}
    ids = [built_rows["image_id"][r] for r in rows]
    plain = {"image_id": ids, **arrays}
    # the same pixels in other memory layouts: Fortran-ordered arrays, and views of a flipped copy
    fortran = {"image_id": ids, **{n: [np.asfortranarray(a) for a in v] for n, v in arrays.items()}}
    views = {"image_id": ids, **{n: [np.ascontiguousarray(a[::-1])[::-1] for a in v] for n, v in arrays.items()}}
    assert not fortran["albedo"][0].flags.c_contiguous and not views["albedo"][0].flags.c_contiguous
    for transform in (RelightOnTheFly(config, seed=1), PairedTransform(96, seed=1), RelightStage(config)):
        expected = transform(plain)
        for batch in (fortran, views):
            got = transform(batch)
            for name in [name for name in ("degraded", "composite", "albedo", "mask") if name in expected]:
                for a, b in zip(got[name], expected[name], strict=True):
                    assert np.array_equal(np.asarray(a), np.asarray(b)), (type(transform).__name__, name)
    # collated tensors in channels-last memory format into the batched relighting
    collated = {name: torch.stack([torch.from_numpy(a.copy()).reshape(*a.shape[:2], -1).permute(2, 0, 1)
                                   for a in arrays[name]]) for name in ("albedo", "normals", "mask", "input")}
    channels_last = {name: tensor.to(memory_format=torch.channels_last) for name, tensor in collated.items()}
    assert not channels_last["albedo"].is_contiguous()
    relighter = RelightBatch(config, seed=2, device="cpu")
    expected, got = relighter(collated, image_ids=ids), relighter(channels_last, image_ids=ids)
    for name in ("degraded", "composite"):
        assert torch.equal(got[name], expected[name]), name
    assert got["degradation_params"] == expected["degradation_params"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def test_a_bfloat16_depth_model_meets_float32_ops_through_an_explicit_cast(tiny, face_paths):
    config = load_config("mvp", overrides=["normals.method=depth", f"normals.depth_model={tiny['depth']}",
                                           "dtype=bfloat16"])
    images = [load_rgb(path, 96) for path in face_paths[:2]]
    batch = DeviceBatch.upload(["a", "b"], images, torch.device("cpu"))
    stage = NormalsStage(config)
    estimator = stage.prepare()
    assert next(estimator.loaded.model.parameters()).dtype == torch.bfloat16
    depth = estimator(batch.input_uint8)
    assert depth.dtype == torch.float32 and depth.shape == (2, 1, 96, 96)
    normals = stage.forward(batch, None)["normals"]
    assert normals.dtype == torch.float32 and normals.shape == (2, 3, 96, 96)
    assert torch.equal(normals, normals.mul(255).round().div(255))  # on the 8-bit grid, as stored
    unit = normals * 2 - 1
    assert torch.allclose(unit.square().sum(dim=1), torch.ones(2, 96, 96), atol=0.03)
    float32 = DepthEstimator(str(tiny["depth"]), torch.device("cpu"), torch.float32)(batch.input_uint8)
    assert not torch.equal(float32, depth)  # bf16 really ran: the same weights give other (close) values
    assert torch.allclose(float32, depth, rtol=0.1, atol=0.1 * float32.abs().max().item())


FORKED_MAP = """
import torch
from datasets import Features
from relight_datasets.api import source_rows, stage_features
from relight_datasets.config import load_config
from relight_datasets.transforms import LoadStage, NormalsStage, SegmentationStage
torch.rand(4, 3, 256, 256, device="cpu", dtype=torch.float32).mul(2).sum()  # OpenMP threads in this process
config = load_config("mvp", overrides=["resolution=96", "segmentation.method=classical", "normals.method=classical"])
rows = source_rows({paths!r})
for stage in (LoadStage(config), SegmentationStage(config), NormalsStage(config)):
    rows = rows.map(stage, batched=True, with_rank=True, batch_size=2, num_proc=2,
                    features=Features({{**rows.features, **stage_features(stage)}}))
print(list(rows["normals_method"]))
"""


def test_stages_in_forked_map_workers_after_torch_ran_in_the_parent(face_paths, tmp_path):
    """GNU OpenMP does not survive fork: without care, a worker's first parallel torch op hangs when the parent's
    torch already ran threads. Run in a subprocess with a timeout, so a hang fails the test instead of the suite."""
    import subprocess
    import sys

    script = FORKED_MAP.format(paths=[str(path) for path in face_paths[:4]])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "2", "HF_DATASETS_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str(["mask_inflation"] * 4)
