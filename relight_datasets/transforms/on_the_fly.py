"""Training-time transforms: paired augmentation and fresh lighting at every epoch.

A built dataset stores one relit version of each photo. These callables turn it into an endless supply of pairs:
:class:`RelightOnTheFly` re-runs the build's relighting (:func:`relight_datasets.relighting.relight`: ``degraded``,
``composite`` and the lighting metadata) from the stored ``albedo``, ``normals``, ``mask`` and ``input`` with newly
drawn lighting;
:class:`PairedTransform` crops, resizes and flips every image column of a row identically; :class:`RelightBatch`
relights a collated batch on the training device (GPU); :class:`Compose` chains them.

Each takes a batch dict (column -> list of values, the form ``Dataset.set_transform``, ``Dataset.with_transform``
and ``IterableDataset.map(..., batched=True)`` pass) and returns one whose image columns are float32 tensors in
[0, 1], ``C x H x W`` (``1 x H x W`` for ``mask``). Image values may be PIL images (a decoded dataset row),
``H x W x C`` uint8 arrays, undecoded ``{"bytes", "path"}`` dicts, or ``C x H x W`` tensors (float in [0, 1] or
uint8). All hold plain picklable state, so they work inside ``DataLoader`` workers.

Randomness is per row. With a ``seed`` it comes from ``(seed, epoch, image_id)`` only (call ``set_epoch`` at the
start of each epoch; the epoch is kept in shared memory, so running DataLoader workers, persistent ones included,
follow it), and a row's draws do not depend on batch composition, worker or process; without a seed every access
draws anew from the operating system's entropy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import BuildConfig, config_from_dict, load_config
from ..relighting import DEGRADATION_STREAM, LABEL_COLUMNS, LABEL_SHAPES, DrawnLight, draw_light, mirror_labels, relight
from ..rng import randint, row_generator, uniform
from .base import IMAGE_COLUMNS, resolve_device, to_uint8_array

AUGMENT_STREAM = "paired_transform"
RELIT_COLUMNS = ("degraded", "composite", *LABEL_COLUMNS)
"""Columns :class:`RelightOnTheFly` and :class:`RelightBatch` regenerate."""


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers


def epoch_stream(stream: str, epoch: int) -> str:
    """Name of a random stream for one epoch. Epoch 0 uses the bare name, so with the build's seed it draws exactly
    what the build drew; later epochs get streams of their own."""
    return stream if epoch == 0 else f"{stream}@epoch{epoch}"


def _entropy_generator() -> torch.Generator:
    """A CPU generator seeded from ``os.urandom``: different in every process and at every call (unlike the global
    RNGs, which forked DataLoader workers may share)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
    return generator


def _batch_size(batch: dict) -> int:
    if not batch:
        return 0
    return len(next(iter(batch.values())))


def _image_ids(batch: dict, size: int, seeded: bool, who: str) -> list[str | None]:
    if "image_id" in batch:
        return [str(v) for v in batch["image_id"]]
    if seeded:
        raise KeyError(f"{who} with a seed needs the image_id column (its per-row draws are keyed on it)")
    return [None] * size


def to_tensor(value) -> torch.Tensor:
    """One image value -> float32 ``C x H x W`` in [0, 1] (``1 x H x W`` for a single-channel image).

    Float tensors are returned as they are (``H x W`` gets a channel axis); uint8 tensors, PIL images, uint8 arrays
    and undecoded ``datasets.Image`` dicts are divided by 255, exactly as the build converts them.
    """
    if isinstance(value, torch.Tensor):
        tensor = value if value.is_floating_point() else value.float().div(255.0)
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor
    array = to_uint8_array(value)
    if array.dtype == bool:  # PIL mode "1"
        array = array.astype(np.uint8) * 255
    if not array.flags.writeable or not array.flags.c_contiguous:  # torch.from_numpy wants a writeable array
        array = np.ascontiguousarray(array).copy()
    tensor = torch.from_numpy(array)
    tensor = tensor.unsqueeze(-1) if tensor.ndim == 2 else tensor
    return tensor.permute(2, 0, 1).float().div_(255.0)


def _image_hw(value) -> tuple[int, int]:
    """Height and width of an image value without converting it."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[-2]), int(value.shape[-1])
    if isinstance(value, Image.Image):
        width, height = value.size
        return height, width
    array = value if isinstance(value, np.ndarray) else to_uint8_array(value)
    return int(array.shape[0]), int(array.shape[1])


def _crop_to_tensor(value, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The ``height x width`` window at ``(top, left)`` of an image value, as float32 ``C x h x w`` in [0, 1].
    (PIL and uint8 values are cropped before the float conversion: a quarter of the work for a 0.5-area crop.)"""
    if isinstance(value, torch.Tensor):
        tensor = value.unsqueeze(0) if value.ndim == 2 else value
        return to_tensor(tensor[:, top : top + height, left : left + width])
    array = to_uint8_array(value)
    return to_tensor(array[top : top + height, left : left + width])


def resolve_config(config: BuildConfig | str | dict | None) -> BuildConfig:
    """A :class:`BuildConfig` from a config, a preset name (``"mvp"``, ``"full"``), a plain dict (e.g. the
    ``relight_datasets.config`` recorded in a dataset card) or None (the ``mvp`` preset)."""
    if config is None:
        return load_config("mvp")
    if isinstance(config, BuildConfig):
        return config
    if isinstance(config, str):
        return load_config(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    raise TypeError(f"config must be a BuildConfig, a preset name, a dict or None, got {type(config).__name__}")


class _EpochAware:
    """Holds ``epoch`` in a one-element shared-memory tensor, so DataLoader workers, forked or spawned, see a
    :meth:`set_epoch` made in the main process after they started (``persistent_workers=True`` included). A plain
    ``pickle``/``deepcopy`` copies the value and detaches the copy."""

    def _init_epoch(self) -> None:
        self._epoch = torch.zeros((), device="cpu", dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Draw the randomness of epoch ``epoch`` from now on (only matters with a seed)."""
        self._epoch.fill_(int(epoch))


# ---------------------------------------------------------------------------------------------------------------------
# Paired augmentation


class PairedTransform(_EpochAware):
    """One random resized crop and horizontal flip per row, applied identically to every image column present.

    ``size``: output ``int`` (square) or ``(height, width)``. ``scale``: range of the crop's area as a fraction of
    the image. The crop's aspect ratio is the image's times a factor drawn log-uniformly from ``ratio`` (near 1), so
    faces are barely stretched when ``size`` has the image's aspect. ``hflip``: probability of a horizontal flip
    (``True`` = 0.5, ``False`` = never, ``1.0`` = always). ``seed``: None draws anew at every access; an integer
    makes each row's crop and flip a function of ``(seed, epoch, image_id)``.

    Images are resampled with antialiased bilinear interpolation; ``mask`` is resampled the same way and thresholded
    at 0.5, so it stays aligned with the images and binary. The dataset's contract is kept on the new pixel grid:
    ``albedo`` and ``degraded`` are black outside the new mask and ``composite`` equals ``input`` there exactly.
    A flip negates the normals' x component (encoded: ``R -> 1 - R``) and mirrors the lighting metadata
    (x components, SH coefficients, azimuths and the ``instruction``'s left/right) so that text
    and image agree. Other columns pass through unchanged.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.8, 1.0), hflip: bool | float = True,
                 seed: int | None = None, ratio: Sequence[float] = (0.9, 1.1)):
        self.size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale!r}")
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio!r}")
        self.flip_probability = (0.5 if hflip else 0.0) if isinstance(hflip, bool) else float(hflip)
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"hflip must be a bool or a probability in [0, 1], got {hflip!r}")
        self.seed = seed
        self._init_epoch()

    def __repr__(self) -> str:
        return (f"PairedTransform(size={self.size}, scale={self.scale}, hflip={self.flip_probability}, "
                f"seed={self.seed}, ratio={self.ratio})")

    def draw(self, image_id: str | None, height: int, width: int) -> tuple[int, int, int, int, bool]:
        """``(top, left, crop_height, crop_width, flip)`` for one row of a ``height x width`` image."""
        if self.seed is None:
            generator = _entropy_generator()
        else:
            generator = row_generator(self.seed, image_id, epoch_stream(AUGMENT_STREAM, self.epoch))
        area = uniform(generator, *self.scale) * height * width
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = width / height * math.exp(uniform(generator, log_low, log_high))
        crop_w = min(width, max(1, round(math.sqrt(area * aspect))))
        crop_h = min(height, max(1, round(math.sqrt(area / aspect))))
        top = randint(generator, 0, height - crop_h)
        left = randint(generator, 0, width - crop_w)
        flip = uniform(generator, 0.0, 1.0) < self.flip_probability
        return top, left, crop_h, crop_w, flip

    def _row(self, batch: dict, row: int, columns: list[str], image_id: str | None) -> tuple[dict, bool]:
        height, width = _image_hw(batch[columns[0]][row])
        for name in columns[1:]:
            if _image_hw(batch[name][row]) != (height, width):
                raise ValueError(f"row {image_id or row}: column {name} is {_image_hw(batch[name][row])}, "
                                 f"{columns[0]} is {(height, width)}; paired images must share one size")
        top, left, crop_h, crop_w, flip = self.draw(image_id, height, width)
        crops = [_crop_to_tensor(batch[name][row], top, left, crop_h, crop_w) for name in columns]
        channels = [c.shape[0] for c in crops]
        stacked = torch.cat(crops)[None]
        if (crop_h, crop_w) != self.size:
            # antialiasing only matters when shrinking (enlarging, it equals plain bilinear and is 3x slower)
            shrinking = crop_h > self.size[0] or crop_w > self.size[1]
            stacked = F.interpolate(stacked, size=self.size, mode="bilinear", align_corners=False,
                                    antialias=shrinking)
        if flip:
            stacked = stacked.flip(-1)
        images = dict(zip(columns, stacked[0].split(channels), strict=True))
        images = {name: image.clamp(0, 1) for name, image in images.items()}  # fresh tensors, one per column
        if "normals" in images and flip:
            images["normals"][0] = 1 - images["normals"][0]  # mirrored surface: x -> -x, i.e. R -> 1 - R
        if "mask" in images:
            mask = (images["mask"] > 0.5).float()
            images["mask"] = mask
            for name in ("albedo", "degraded"):
                if name in images:
                    images[name] = images[name] * mask
            if "composite" in images and "input" in images:
                images["composite"] = torch.where(mask > 0, images["composite"], images["input"])
        return images, flip

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        size = _batch_size(batch)
        columns = [name for name in IMAGE_COLUMNS if name in batch]
        out = dict(batch)
        if not columns or size == 0:
            return out
        ids = _image_ids(batch, size, self.seed is not None, "PairedTransform")
        results = {name: [None] * size for name in columns}
        labels = [name for name in LABEL_COLUMNS if name in batch]
        mirror = {name: list(batch[name]) for name in labels}
        for row in range(size):
            with torch.no_grad():
                images, flip = self._row(batch, row, columns, ids[row])
            for name, image in images.items():
                results[name][row] = image
            if flip:
                self._mirror_metadata(batch, row, mirror)
        out.update(results)
        out.update(mirror)
        return out

    @staticmethod
    def _mirror_metadata(batch: dict, row: int, mirror: dict) -> None:
        """Mirror the lighting labels of a flipped row (those present) into ``mirror``
        (:func:`~relight_datasets.relighting.mirror_labels`)."""
        mirrored = mirror_labels({name: batch[name][row] for name in mirror})
        for name, value in mirrored.items():
            mirror[name][row] = value


# ---------------------------------------------------------------------------------------------------------------------
# Relighting


class _Relighter(_EpochAware):
    """Config, seed, epoch and the per-row lighting draws shared by :class:`RelightOnTheFly` and
    :class:`RelightBatch`, so both draw the same lighting for the same ``(seed, epoch, image_id)``."""

    def __init__(self, config: BuildConfig | str | dict | None = None, seed: int | None = None,
                 quantize: bool = True):
        self.config = resolve_config(config)
        self.seed = seed
        self.quantize = quantize
        self._init_epoch()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(config={self.config.fingerprint()}, seed={self.seed}, "
                f"epoch={self.epoch}, quantize={self.quantize})")

    def draw(self, image_id: str | None) -> DrawnLight:
        """The drawn light of one row: from ``(seed, epoch, image_id)``, or from fresh entropy without a seed."""
        if self.seed is None:
            generator = _entropy_generator()
        else:
            generator = row_generator(self.seed, image_id, epoch_stream(DEGRADATION_STREAM, self.epoch))
        return draw_light(self.config, generator)

    def relight_tensors(self, albedo: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                        image_ids: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        """:func:`~relight_datasets.relighting.relight` of equal-sized rows under the rows' drawn lights, with this
        transform's config and ``quantize``."""
        lights = [self.draw(image_id) for image_id in image_ids]
        return relight(albedo, normals, mask, image, lights, self.config, quantize=self.quantize)


class RelightOnTheFly(_Relighter):
    """Per-row transform: new ``degraded``, ``composite`` and lighting metadata from the row's ``albedo``,
    ``normals``, ``mask`` and ``input`` under freshly drawn lighting.

    ``config``: a :class:`BuildConfig`, a preset name, a config dict, or None for the ``mvp`` preset (ideally the
    config the dataset was built with: it sets the lighting ranges, ``reference_resolution`` and feathering).
    ``seed``: None draws new lighting at every access; an integer makes it a function of ``(seed, epoch,
    image_id)`` (call :meth:`set_epoch` every epoch). ``quantize``: round ``degraded``/``composite`` to 8 bits as
    stored (default), which makes epoch 0 with the build's seed reproduce the stored rows exactly.

    Rows may hold PIL images (straight from the dataset) or tensors (after :class:`PairedTransform`), of any sizes
    (rows are grouped by size and relit together). Runs on the CPU (meant for DataLoader workers); use
    :class:`RelightBatch` to relight collated batches on a GPU. Returns the batch with every image column as a float
    tensor (``albedo``, ``mask``, ``normals`` and ``input`` hold their original values, tensors passed in are
    returned as they are), new ``degraded``/``composite`` and the lighting labels
    (:data:`~relight_datasets.relighting.LABEL_SHAPES`): numeric ones as float32 tensors of their shape, text as
    strings.
    """

    REQUIRED = ("albedo", "normals", "mask", "input")

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        size = _batch_size(batch)
        missing = [name for name in self.REQUIRED if name not in batch]
        if missing:
            raise KeyError(f"RelightOnTheFly needs the columns {', '.join(self.REQUIRED)}; "
                           f"missing {', '.join(missing)}")
        out = dict(batch)
        for name in IMAGE_COLUMNS:
            if name in batch:
                out[name] = [to_tensor(value) for value in batch[name]]
        ids = _image_ids(batch, size, self.seed is not None, "RelightOnTheFly")
        groups: dict[tuple[int, int], list[int]] = {}
        for row in range(size):
            groups.setdefault(tuple(out["albedo"][row].shape[-2:]), []).append(row)
        new = {name: [None] * size for name in RELIT_COLUMNS}
        with torch.no_grad():
            for rows in groups.values():
                stack = {name: torch.stack([out[name][r] for r in rows]) for name in self.REQUIRED}
                degraded, result, records = self.relight_tensors(stack["albedo"], stack["normals"], stack["mask"],
                                                                 stack["input"], [ids[r] for r in rows])
                for index, row in enumerate(rows):
                    new["degraded"][row] = degraded[index]
                    new["composite"][row] = result[index]
                    for key, value in records[index].items():
                        new[key][row] = value
        for name, shape in LABEL_SHAPES.items():
            if shape is not None:
                new[name] = [torch.tensor(v, device="cpu", dtype=torch.float32) for v in new[name]]
        out.update(new)
        return out


class RelightBatch(_Relighter):
    """Relight a collated batch on ``device`` (e.g. in the training loop, on the GPU).

    ``batch``: a dict with ``albedo``, ``normals``, ``input`` (``B x 3 x H x W``) and ``mask`` (``B x 1 x H x W``
    or ``B x H x W``) tensors, float in [0, 1] or uint8, and the rows' ``image_id`` list (or pass ``image_ids``).
    Returns a new dict: the batch with ``degraded``/``composite`` (``B x 3 x H x W`` on ``device``),
    the numeric lighting labels as float32 tensors on the CPU (``light_direction`` ``B x 3``, ``ambient`` ``B``,
    ``sh_irradiance`` ``B x 27``, ...) and the text ones as lists: what collating :class:`RelightOnTheFly`'s rows
    would give, drawn from the same ``(seed, epoch, image_id)`` streams. ``device``: None/``"auto"`` = CUDA when
    available.
    """

    def __init__(self, config: BuildConfig | str | dict | None = None, seed: int | None = None,
                 device: str | torch.device | None = None, quantize: bool = True):
        super().__init__(config, seed, quantize)
        self.device = device

    def __call__(self, batch: dict, image_ids: Sequence[str] | None = None) -> dict:
        device = resolve_device(self.device)

        def load(name: str) -> torch.Tensor:
            if name not in batch:
                raise KeyError(f"RelightBatch needs a collated {name!r} tensor")
            tensor = torch.as_tensor(batch[name], device=device)
            tensor = tensor if tensor.is_floating_point() else tensor.float().div_(255.0)
            return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor

        albedo, normals, mask, image = (load(name) for name in ("albedo", "normals", "mask", "input"))
        if albedo.ndim != 4:
            raise ValueError(f"RelightBatch expects B x C x H x W tensors, got albedo of shape {tuple(albedo.shape)}")
        ids = list(image_ids) if image_ids is not None else _image_ids(batch, albedo.shape[0], self.seed is not None,
                                                                      "RelightBatch")
        if len(ids) != albedo.shape[0]:
            raise ValueError(f"{len(ids)} image ids for a batch of {albedo.shape[0]}")
        with torch.no_grad():
            degraded, result, records = self.relight_tensors(albedo, normals, mask, image, ids)
        out = dict(batch)
        out["degraded"], out["composite"] = degraded, result
        for name, shape in LABEL_SHAPES.items():
            values = [record[name] for record in records]
            out[name] = values if shape is None else torch.tensor(values, device="cpu", dtype=torch.float32)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Chaining


class Compose:
    """Apply batch transforms in order; :meth:`set_epoch` reaches every member that has one. Picklable."""

    def __init__(self, transforms: Iterable[Callable[[dict], dict]]):
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"

    def set_epoch(self, epoch: int) -> None:
        for transform in self.transforms:
            if hasattr(transform, "set_epoch"):
                transform.set_epoch(epoch)

    def __call__(self, batch: dict) -> dict:
        for transform in self.transforms:
            batch = transform(batch)
        return batch
