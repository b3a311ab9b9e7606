"""Host <-> device crossings of the build's pipeline, counted on a CPU (issue 13 item 2).

On a GPU every image should cross the bus twice: once in (the decoded uint8 input) and once out (each stored image,
as uint8, to be encoded), plus one copy in of each mask the host-side classical segmenter makes. On a CPU nothing
crosses anything, so :class:`TransferCounter` counts the *calls at the host/device boundary* that the code makes on
image-sized data; each is a copy on a GPU:

- ``uploads``: a torch call that turns a numpy array into a tensor (``torch.tensor``, ``as_tensor``, ``asarray``,
  ``from_numpy``). The pipeline passes its device, so on a GPU each is exactly one host-to-device copy.
- ``downloads``: ``Tensor.numpy`` (``force=True`` copies to the host inside the call), ``Tensor.tolist`` and
  ``np.asarray(tensor)``. Numpy memory is host memory, so on a GPU each is one device-to-host copy.
- ``moves``: ``Tensor.to`` naming a device, ``Tensor.cpu``, ``Tensor.cuda`` and ``Tensor.copy_``, made by
  ``relight_datasets`` code, counted per calling function. Each would be a crossing on a GPU unless the tensor
  already lives there. The pipeline makes one kind only, and not of an image: a row with a noise shadow pattern
  (``clouds``, ``perlin_noise``) copies the pattern's gradient table (8 x 128 x 128, drawn from the row's CPU
  generator so rows are the same on every device) to the device, 0.5 MB whatever the image size.

"Image-sized" means at least as many elements as the smallest input image has pixels; scalars, boxes and the
tokenizer's ids do not count. Torch function modes are per thread; the pipeline makes its torch calls on the calling
thread (its thread pools run Pillow, OpenCV and the PNG codecs only), so the counter sees all of them.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import relight_datasets
from relight_datasets.builder.pipeline import RelightPipeline
from relight_datasets.config import load_config
from relight_datasets.testing import make_tiny_checkpoints
from relight_datasets.transforms import AlbedoStage

RESOLUTION = 96
ROWS = 3
PACKAGE_DIR = str(Path(relight_datasets.__file__).resolve().parent)
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
COUNTER_FUNCTIONS = {"__torch_function__", "counted_from_numpy"}
UPLOADS = {torch.tensor, torch.as_tensor, torch.asarray}
DOWNLOADS = {torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__array__}
MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_}
OPEN = ["segmentation.score_threshold=0", "segmentation.min_coverage=0"]


def _names_a_device(func, args: tuple, kwargs: dict) -> bool:
    """Whether a ``Tensor.to`` / ``cpu`` / ``cuda`` / ``copy_`` call sends data to a device (``to(dtype)`` does not)."""
    if func is not torch.Tensor.to:
        return True
    targets = [*args[1:], kwargs.get("device"), kwargs.get("other")]
    return any(isinstance(target, str | torch.device | torch.Tensor) for target in targets)


def _caller(folder: str) -> str | None:
    """``file:function`` of the innermost caller outside torch and this counter when it is code in ``folder``
    (the file relative to ``folder``'s parent), else None."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(TORCH_DIR) and frame.f_code.co_name not in COUNTER_FUNCTIONS:
            if not path.startswith(folder):
                return None
            return f"{Path(path).relative_to(Path(folder).parent).as_posix()}:{frame.f_code.co_name}"
        frame = frame.f_back
    return None


class TransferCounter(TorchFunctionMode):
    """Counts boundary calls on image-sized data (see the module docstring) by the data's kind: ``"mask"`` for
    one-channel data, ``"image"`` for colour images. ``moves`` are counted in code under ``folder`` only, by
    ``file:function`` of the call."""

    def __init__(self, min_elements: int, folder: str = PACKAGE_DIR):
        super().__init__()
        self.min_elements = min_elements
        self.folder = folder
        self.uploads: Counter = Counter()
        self.downloads: Counter = Counter()
        self.moves: Counter = Counter()

    @staticmethod
    def _kind(shape: tuple[int, ...]) -> str:
        return "mask" if len(shape) == 2 or (len(shape) == 3 and 1 in (shape[0], shape[-1])) else "image"

    def upload(self, array) -> None:
        if isinstance(array, np.ndarray) and array.size >= self.min_elements:
            self.uploads[self._kind(array.shape)] += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in UPLOADS and args:
            self.upload(args[0])
        elif args and isinstance(args[0], torch.Tensor) and args[0].numel() >= self.min_elements:
            shape = tuple(args[0].shape)
            if func in DOWNLOADS:
                self.downloads[self._kind(shape)] += 1
            elif func in MOVES and _names_a_device(func, args, kwargs) and (site := _caller(self.folder)):
                self.moves[site] += 1
        return func(*args, **kwargs)


@contextmanager
def counting_transfers(min_elements: int, folder: str = PACKAGE_DIR):
    """A :class:`TransferCounter` active on this thread, ``torch.from_numpy`` included (function modes do not see
    it, so it is wrapped for the duration)."""
    counter = TransferCounter(min_elements, folder)
    from_numpy = torch.from_numpy

    def counted_from_numpy(array):
        counter.upload(array)
        return from_numpy(array)

    torch.from_numpy = counted_from_numpy
    try:
        with counter:
            yield counter
    finally:
        torch.from_numpy = from_numpy


def source_batch(face_paths: list[Path]) -> dict[str, list]:
    paths = face_paths[:ROWS]
    return {"image_id": [path.name for path in paths], "source": ["fixture"] * len(paths),
            "input": [{"bytes": path.read_bytes(), "path": None} for path in paths]}


def noise_pattern_rows(rows: dict[str, list]) -> int:
    """How many rows drew a noise shadow pattern (each copies its gradient table to the device)."""
    patterns = [json.loads(params)["pattern"] for params in rows["degradation_params"]]
    return sum(1 for pattern in patterns if pattern and pattern["family"] in ("clouds", "perlin_noise"))


def count_pipeline(overrides: list[str], batch: dict[str, list]) -> tuple[TransferCounter, dict[str, list]]:
    config = load_config("mvp", overrides=[f"resolution={RESOLUTION}", *overrides])
    pipeline = RelightPipeline(config, "cpu")
    pipeline.prepare()
    with counting_transfers(RESOLUTION * RESOLUTION) as counter:
        rows = pipeline(batch)
    return counter, rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def test_the_counter_sees_each_kind_of_crossing():
    """Known code (moves counted in this file): what the pipeline used to do per stage, and what crosses nothing."""
    array = np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8)
    with counting_transfers(RESOLUTION * RESOLUTION, folder=str(Path(__file__).parent)) as counter:
        tensor = torch.from_numpy(array).to("cpu").permute(2, 0, 1)  # upload, then move
        torch.tensor(array[..., 0], device="cpu", dtype=torch.uint8)  # upload of a mask
        tensor.float().cpu().numpy()  # move, then download
        tensor.float().numpy(force=True)  # download
        tensor.to(torch.float32)  # a dtype change crosses nothing
        torch.zeros(4, device="cpu", dtype=torch.float32).numpy()  # not image-sized
    assert counter.uploads == {"image": 1, "mask": 1}
    assert counter.downloads == {"image": 2}
    site = "tests/test_transfers.py:test_the_counter_sees_each_kind_of_crossing"
    assert counter.moves == {site: 2}


def test_a_dataset_map_stage_uploads_its_inputs_and_downloads_its_outputs(face_paths):
    """A stage run alone (the ``Dataset.map`` path) reads uint8 columns from the host and returns uint8 columns:
    its inputs go in and its outputs come out once each, and nothing else crosses."""
    from conftest import load_rgb

    config = load_config("mvp", overrides=[f"resolution={RESOLUTION}"])
    images = [load_rgb(path, RESOLUTION) for path in face_paths[:2]]
    masks = [np.where(image.mean(axis=2) > 60, 255, 0).astype(np.uint8) for image in images]
    batch = {"image_id": ["a", "b"], "input": images, "mask": masks}
    with counting_transfers(RESOLUTION * RESOLUTION) as counter:
        out = AlbedoStage(config, "cpu")(batch)
    assert np.asarray(out["albedo"][0]).shape == (RESOLUTION, RESOLUTION, 3)
    assert counter.uploads == {"image": 2, "mask": 2}
    assert counter.downloads == {"image": 2}
    assert counter.moves == {}


def test_weight_free_pipeline_copies_each_image_once_each_way(face_paths):
    counter, rows = count_pipeline(["segmentation.method=classical", "normals.method=classical"],
                                   source_batch(face_paths))
    assert not any(rows["skip_reason"]), rows["skip_reason"]
    assert counter.uploads["image"] == ROWS  # the decoded inputs
    assert counter.uploads["mask"] == ROWS  # the classical segmenter's masks, made on the host by OpenCV
    # every stored image but the input (encoded from its host copy): albedo, degraded, composite, normals; mask
    assert counter.downloads == {"image": 4 * ROWS, "mask": ROWS}
    assert noise_pattern_rows(rows) == ROWS  # the mvp preset: clouds on every row
    assert counter.moves == {"relight_datasets/ops/patterns.py:_fbm": ROWS}


def test_shipped_model_pipeline_copies_each_image_once_each_way(face_paths):
    counter, rows = count_pipeline(["segmentation.method=mediapipe", "normals.method=face_mesh"],
                                   source_batch(face_paths))
    assert rows["segmentation_method"] == ["mediapipe"] * ROWS and rows["normals_method"] == ["face_mesh"] * ROWS
    assert counter.uploads["image"] == ROWS
    assert counter.uploads["mask"] == ROWS  # MediaPipe's masks, made on the host (LiteRT); face meshes are 468 points
    assert counter.downloads == {"image": 4 * ROWS, "mask": ROWS}


def test_model_pipeline_keeps_masks_and_depth_on_the_device(tiny, face_paths):
    counter, rows = count_pipeline(["segmentation.method=sam3", f"segmentation.sam3_model={tiny['sam3']}",
                                    "normals.method=depth", f"normals.depth_model={tiny['depth']}", *OPEN],
                                   source_batch(face_paths))
    assert rows["segmentation_method"] == ["sam3"] * ROWS and rows["normals_method"] == ["depth"] * ROWS
    assert counter.uploads == {"image": ROWS}  # SAM3's masks never leave the device
    assert counter.downloads == {"image": 4 * ROWS, "mask": ROWS}
    assert counter.moves == {"relight_datasets/ops/patterns.py:_fbm": noise_pattern_rows(rows)}
