"""What every batched stage shares: config, device placement, the device batch the stages hand each other, the
conversion of ``Dataset.map`` batches to and from it, and skip pass-through.

Inside the build's pipeline, stages run on a :class:`DeviceBatch`: rows of one image size whose image columns are
float tensors on the device, rounded to the 8-bit grid the dataset stores (so every stage consumes exactly what is
stored). Each stage's :meth:`Stage.forward` adds its columns to such a batch.

A stage is also a callable ``stage(batch, rank=None) -> dict`` for ``Dataset.map(stage, batched=True,
with_rank=True)``: image values in the batch (PIL images, numpy arrays of any layout, nested lists, undecoded
``{"bytes", "path"}`` dicts, ``C x H x W`` tensors) are grouped by size, copied to the device once, run through
:meth:`Stage.forward`, and its image outputs come back as 8-bit PIL images (mode ``RGB``, ``L`` for masks), the
form a decoded ``datasets.Image`` column holds. (Not numpy arrays: ``Dataset.map`` stores an ``H x W`` uint8 array
as a 32-bit integer image.)
A row whose ``skip_reason`` is non-empty is passed through untouched (its outputs are ``None``).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from ..config import BuildConfig

SKIP_COLUMN = "skip_reason"
TIMING_LOCK = threading.Lock()  # stages may run on several batch threads at once (see ChunkProcessor)
IMAGE_COLUMNS = ("input", "mask", "albedo", "degraded", "composite", "normals")
"""The dataset's image columns, in schema order."""


_IN_FORKED_CHILD = False


def _mark_forked_child() -> None:
    global _IN_FORKED_CHILD
    _IN_FORKED_CHILD = True


os.register_at_fork(after_in_child=_mark_forked_child)


def one_torch_thread_after_fork() -> None:
    """In a process forked from one whose torch ran OpenMP threads (a ``Dataset.map(num_proc=...)`` worker), the
    first parallel torch op would hang: GNU OpenMP does not survive ``fork``. One torch thread per such worker avoids
    it, as ``DataLoader`` workers do (the workers share the cores anyway)."""
    if _IN_FORKED_CHILD and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


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
    """A column value -> ``H x W x C`` (or ``H x W``) uint8 array. Accepts numpy arrays (integer levels 0-255, bool,
    or float in [0, 1]), nested lists (an image column stored without an ``Image`` feature), PIL images,
    ``C x H x W`` tensors (uint8, or float in [0, 1]) and the ``{"bytes": ..., "path": ...}`` dicts of an undecoded
    ``datasets.Image``. uint8 arrays are returned as they are (any strides); everything else is converted."""
    if isinstance(value, list):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint8:
            return value
        if value.dtype == bool:
            return value.astype(np.uint8) * 255
        if np.issubdtype(value.dtype, np.integer):  # 0-255 levels in a wider type (e.g. nested lists of ints)
            return np.clip(value, 0, 255).astype(np.uint8)
        return np.clip(np.rint(value * 255), 0, 255).astype(np.uint8)
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, torch.Tensor):
        uint8 = value if value.dtype == torch.uint8 else value.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        array = uint8.numpy(force=True)
        return array.transpose(1, 2, 0) if array.ndim == 3 else array
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            return np.asarray(image)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def upload_images(arrays: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Equal-sized ``H x W x C`` (or ``H x W``) uint8 arrays -> contiguous ``B x C x H x W`` uint8 on ``device``: one
    host-to-device copy per array (``torch.tensor``), stacked on the device. Arrays of any strides are accepted; a
    non-contiguous one (negative strides included) is made contiguous on the host first."""
    tensors = [torch.tensor(np.ascontiguousarray(array), device=device, dtype=torch.uint8) for array in arrays]
    return torch.stack([t.permute(2, 0, 1) if t.ndim == 3 else t[None] for t in tensors])


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``B x C x H x W`` -> float32 in [0, 1] on the same device (``x / 255``: on the 8-bit grid)."""
    return images.to(torch.float32).div_(255.0)


def download_images(images: torch.Tensor) -> list[np.ndarray]:
    """Float ``B x C x H x W`` in [0, 1] -> ``H x W x C`` uint8 arrays (``H x W`` when C == 1), rounded on the
    device: one device-to-host copy per image (``Tensor.numpy(force=True)``)."""
    uint8 = images.clamp(0, 1).mul_(255).round_().to(torch.uint8)
    uint8 = uint8[:, 0] if uint8.shape[1] == 1 else uint8.permute(0, 2, 3, 1).contiguous()
    return [image.numpy(force=True) for image in uint8]


def group_by_shape(shapes: Sequence[tuple[int, ...]], rows: Iterable[int]) -> dict[tuple[int, int], list[int]]:
    """Row indices grouped by image height and width (``shapes[row][:2]``), so each group stacks into one tensor."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in rows:
        groups[tuple(shapes[row][:2])].append(row)
    return dict(groups)


def skip_reasons(batch: dict, size: int) -> list[str]:
    """The batch's ``skip_reason`` column as a list of str ("" for a row to process); all "" when it is absent.
    Accepts a list or a numpy array (a batch formatted by ``with_format("numpy")``)."""
    values = batch.get(SKIP_COLUMN)
    if values is None:
        return [""] * size
    return ["" if value is None else str(value) for value in values]


@dataclass
class DeviceBatch:
    """Rows of one image size on one device, as the stages hand them to each other.

    ``host_input``: the decoded ``H x W x 3`` uint8 inputs on the host (for host-side work such as OpenCV);
    ``input_uint8``: the same images on the device, ``B x 3 x H x W`` uint8 (the one host-to-device copy);
    ``images``: image columns as float32 ``B x C x H x W`` on the device, on the 8-bit grid (``input`` among them);
    ``values``: the other columns, one list entry per row.
    """

    image_ids: list[str]
    host_input: list[np.ndarray]
    input_uint8: torch.Tensor
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, list] = field(default_factory=dict)

    @classmethod
    def upload(cls, image_ids: list[str], host_input: list[np.ndarray], device: torch.device) -> DeviceBatch:
        """A batch of decoded equal-sized inputs, copied to ``device`` once."""
        input_uint8 = upload_images(host_input, device)
        return cls(list(image_ids), list(host_input), input_uint8, {"input": uint8_to_unit(input_uint8)})

    @property
    def device(self) -> torch.device:
        return self.input_uint8.device

    def __len__(self) -> int:
        return len(self.image_ids)

    def add(self, outputs: dict[str, torch.Tensor | list]) -> DeviceBatch:
        """A batch with ``outputs`` (tensors: image columns; lists: other columns) added."""
        images = {name: value for name, value in outputs.items() if isinstance(value, torch.Tensor)}
        values = {name: list(value) for name, value in outputs.items() if not isinstance(value, torch.Tensor)}
        return replace(self, images={**self.images, **images}, values={**self.values, **values})

    def select(self, keep: list[int]) -> DeviceBatch:
        """The rows at positions ``keep`` (device tensors are indexed on the device)."""
        index = torch.tensor(keep, device=self.device, dtype=torch.int64)
        return DeviceBatch([self.image_ids[i] for i in keep], [self.host_input[i] for i in keep],
                           self.input_uint8.index_select(0, index),
                           {name: tensor.index_select(0, index) for name, tensor in self.images.items()},
                           {name: [values[i] for i in keep] for name, values in self.values.items()})


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
    """Base class: holds the config and a device; subclasses implement :meth:`forward`.

    ``inputs``: the image columns :meth:`forward` reads (``input`` is always present in a :class:`DeviceBatch`);
    ``outputs``: the columns it writes.
    """

    name = "stage"
    inputs: tuple[str, ...] = ("input",)
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

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        """This stage's outputs for every row of ``batch``: image columns as float ``B x C x H x W`` tensors on the
        batch's device, on the 8-bit grid; other columns as lists. A stage that drops rows also returns a
        ``skip_reason`` list ("" for a kept row)."""
        raise NotImplementedError

    def timed_forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        """:meth:`forward`, its wall time added to :attr:`seconds`."""
        started = time.perf_counter()
        with torch.inference_mode():
            outputs = self.forward(batch, rank)
        with TIMING_LOCK:
            self.seconds += time.perf_counter() - started
        return outputs

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        one_torch_thread_after_fork()
        started = time.perf_counter()
        size = len(batch["image_id"])
        skip = skip_reasons(batch, size)
        outputs = {name: [None] * size for name in self.outputs}
        active = [row for row in range(size) if not skip[row]]
        if active:
            with torch.inference_mode():
                self.map_rows(batch, active, outputs, skip, rank)
        with TIMING_LOCK:
            self.seconds += time.perf_counter() - started
        return {**outputs, SKIP_COLUMN: skip}

    def map_rows(self, batch: dict, rows: list[int], outputs: dict[str, list], skip: list[str],
                 rank: int | None) -> None:
        """The ``Dataset.map`` path: the active ``rows`` of a column batch, grouped by size, through
        :meth:`forward`; fills ``outputs[column][row]`` and ``skip[row]``."""
        device = self.device(rank)
        active = set(rows)
        arrays = {name: [to_uint8_array(batch[name][row]) if row in active else None for row in range(len(skip))]
                  for name in ("input", *self.inputs)}
        shapes = [array.shape if array is not None else None for array in arrays["input"]]
        for group in group_by_shape(shapes, rows).values():
            device_batch = DeviceBatch.upload([str(batch["image_id"][row]) for row in group],
                                              [arrays["input"][row] for row in group], device)
            device_batch = device_batch.add(
                {name: uint8_to_unit(upload_images([arrays[name][row] for row in group], device))
                 for name in self.inputs if name != "input"})
            results = self.forward(device_batch, rank)
            reasons = results.pop(SKIP_COLUMN, [""] * len(group))
            for name, value in results.items():
                if isinstance(value, torch.Tensor):
                    value = [Image.fromarray(array) for array in download_images(value)]
                for row, item, reason in zip(group, value, reasons, strict=True):
                    if not reason:
                        outputs[name][row] = item
            for row, reason in zip(group, reasons, strict=True):
                skip[row] = reason
