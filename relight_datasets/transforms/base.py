"""What every batched stage shares: config, device placement, batch-column conversion and skip pass-through.

A stage is a callable ``stage(batch, rank=None) -> dict`` for ``Dataset.map(stage, batched=True, with_rank=True)``.
Image columns travel between stages as ``H x W x C`` uint8 numpy arrays (``H x W`` for masks), the form the
``datasets.Image`` feature stores; a stage converts them to float tensors on its device, grouped by image size.
A row whose ``skip_reason`` is non-empty is passed through untouched (its outputs are ``None``).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ..config import BuildConfig

SKIP_COLUMN = "skip_reason"
TIMING_LOCK = threading.Lock()  # stages may run on several batch threads at once (see ChunkProcessor)
IMAGE_COLUMNS = ("input", "mask", "albedo", "degraded", "composite", "normals")
"""The dataset's image columns, in schema order."""


def resolve_device(device: str | torch.device | None, rank: int | None = None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU. A bare ``cuda`` with a process rank picks
    ``cuda:{rank % device_count}`` so ranks of a multi-process map spread over the GPUs."""
    text = "auto" if device is None else str(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and rank is not None and torch.cuda.device_count() > 1:
        text = f"cuda:{rank % torch.cuda.device_count()}"
    return torch.device(text)


def to_uint8_array(value) -> np.ndarray:
    """A column value -> ``H x W x C`` (or ``H x W``) uint8 array. Accepts numpy arrays, PIL images, ``C x H x W``
    float tensors in [0, 1], and the ``{"bytes": ..., "path": ...}`` dicts of an undecoded ``datasets.Image``."""
    if isinstance(value, np.ndarray):
        return value if value.dtype == np.uint8 else np.clip(np.rint(value * 255), 0, 255).astype(np.uint8)
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, torch.Tensor):
        array = value.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        return array.transpose(1, 2, 0) if array.ndim == 3 else array
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            return np.asarray(image)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def group_by_shape(arrays: list[np.ndarray | None], rows: Iterable[int]) -> dict[tuple[int, int], list[int]]:
    """Row indices grouped by image height and width, so each group stacks into one tensor."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in rows:
        groups[arrays[row].shape[:2]].append(row)
    return dict(groups)


class ThreadPool:
    """A lazily started thread pool that survives pickling and forking (``Dataset.map`` with ``num_proc``): each
    process starts its own threads on first use. For work that releases the GIL (OpenCV, zlib). ``map`` may be called
    from several threads at once."""

    _start_lock = threading.Lock()

    def __init__(self, threads: int | None = None):
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._executor: ThreadPoolExecutor | None = None
        self._pid = 0

    def __getstate__(self):
        return {"threads": self.threads, "_executor": None, "_pid": 0}

    def map(self, function: Callable, items: list) -> list:
        """``[function(item) for item in items]``, run on the pool's threads, results in order."""
        with self._start_lock:
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="relight")
                self._pid = os.getpid()
        return list(self._executor.map(function, items))


class Stage:
    """Base class: holds the config and a device; subclasses implement :meth:`process`."""

    name = "stage"
    outputs: tuple[str, ...] = ()

    def __init__(self, config: BuildConfig, device: str | torch.device | None = "cpu"):
        self.config = config
        self.device_spec = device
        self.seconds = 0.0

    def device(self, rank: int | None) -> torch.device:
        return resolve_device(self.device_spec, rank)

    def prepare(self, rank: int | None = None):
        """Load what the stage needs on this process's device (models); stages without models have nothing to do."""
        return None

    def describe(self) -> dict:
        """The models behind this stage's output (empty for weight-free stages), for the build report and card."""
        return {}

    def scale(self, height: int, width: int) -> float:
        """Factor converting the config's pixel sizes (given at ``reference_resolution``) to this image."""
        return max(height, width) / self.config.reference_resolution

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        started = time.perf_counter()
        size = len(batch["image_id"])
        skip = list(batch.get(SKIP_COLUMN) or [""] * size)
        active = [row for row in range(size) if not skip[row]]
        outputs = {name: [None] * size for name in self.outputs}
        if active:
            with torch.inference_mode():
                self.process(batch, active, outputs, skip, rank)
        with TIMING_LOCK:
            self.seconds += time.perf_counter() - started
        return {**outputs, SKIP_COLUMN: skip}

    def process(self, batch: dict[str, list], rows: list[int], outputs: dict[str, list], skip: list[str],
                rank: int | None) -> None:
        """Fill ``outputs[column][row]`` for each active ``row``; set ``skip[row]`` to a reason to drop a row."""
        raise NotImplementedError
