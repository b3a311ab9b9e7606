"""Stage 2: albedo (lighting removed from the person)."""

from __future__ import annotations

import torch

from ..models.loading import load_or_fall_back, resolve_dtype
from ..ops.albedo import blend_with_original, lab_albedo, retinex_albedo
from ..relighting import quantize_to_8bit
from ..rng import noise_generators, row_generator, uniform
from .base import DeviceBatch, Stage

ALBEDO_METHODS = ("retinex", "lab", "intrinsic", "auto")
ALBEDO_STREAM = "albedo"
"""Name of the per-row random stream the blend ratio is drawn from (:func:`relight_datasets.rng.row_generator`)."""
INTRINSIC_STREAM = "intrinsic_albedo"
"""Per-row random streams of the intrinsic model's starting noise, one per ensemble member (``intrinsic_albedo:0``,
...)."""


class AlbedoStage(Stage):
    """Albedo ``3 x H x W``, black outside the mask, with ``albedo_blend_ratio`` ~ U(``albedo.blend_range``) of the
    original image blended back in. ``albedo.method``:

    - ``retinex`` (default): mask-aware multi-scale Retinex; ``lab``: LAB/bilateral (both weight-free);
    - ``intrinsic``: the albedo of an intrinsic-image model (``albedo.intrinsic_model``, a Marigold
      ``MarigoldIntrinsicsPipeline``) run on the whole input image, batched; only the person's pixels are kept.
      A model that cannot load raises :class:`~relight_datasets.models.ModelUnavailable` (exit 2);
    - ``auto``: ``intrinsic`` when its model loads, else Retinex, the reason logged once and kept in
      :meth:`describe`.

    ``albedo_method`` records what made each row's albedo (``intrinsic``, ``retinex`` or ``lab``).
    """

    name = "albedo"
    inputs = ("input", "mask")
    outputs = ("albedo", "albedo_method", "albedo_blend_ratio")

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self._models: dict[torch.device, object] = {}
        self.fallbacks: list[dict] = []

    def _load(self, device: torch.device):
        from ..models.marigold import IntrinsicAlbedo

        cfg = self.config.albedo
        return load_or_fall_back(
            lambda: IntrinsicAlbedo(cfg.intrinsic_model, device, resolve_dtype(self.config.dtype, device),
                                    cfg.intrinsic_steps, cfg.intrinsic_ensemble),
            cfg.method == "intrinsic", "intrinsic", "albedo: intrinsic model unavailable, falling back to Retinex",
            self.fallbacks)

    def prepare(self, rank: int | None = None):
        """The intrinsic model for this process's device (None: a weight-free method), loaded on first call."""
        device = self.device(rank)
        if device not in self._models:
            self._models[device] = self._load(device) if self.config.albedo.method in ("intrinsic", "auto") else None
        return self._models[device]

    def describe(self) -> dict:
        """The intrinsic model (id, revision, dtype, device), or the fallback taken; empty for a weight-free method."""
        model = next(iter(self._models.values()), None)
        if model is not None:
            return {"method": model.method, **model.loaded.describe()}
        return {"method": "retinex", "fallbacks": self.fallbacks} if self.fallbacks else {}

    def _classical(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, str]:
        cfg = self.config.albedo
        scale = self.scale(*image.shape[-2:])
        if cfg.method == "lab":
            return lab_albedo(image, mask, cfg.bilateral_diameter, cfg.bilateral_sigma_color,
                              cfg.bilateral_sigma_space * scale, cfg.color_balance_percent), "lab"
        return retinex_albedo(image, mask, [s * scale for s in cfg.retinex_scales], cfg.color_balance_percent,
                              cfg.retinex_color, cfg.robust_tau, cfg.robust_iterations), "retinex"

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        cfg = self.config.albedo
        model = self.prepare(rank)
        image = batch.images["input"]
        mask = (batch.images["mask"] > 0.5).to(image.dtype)
        if model is None:
            albedo, method = self._classical(image, mask)
        else:
            generators = noise_generators(self.config.seed, batch.image_ids, INTRINSIC_STREAM, cfg.intrinsic_ensemble)
            albedo, method = model(batch.input_uint8, generators).to(image.dtype) * mask, model.method
        ratios = [uniform(row_generator(self.config.seed, image_id, ALBEDO_STREAM), *cfg.blend_range)
                  for image_id in batch.image_ids]
        ratio = torch.tensor(ratios, device=image.device, dtype=image.dtype)
        blended = blend_with_original(albedo, image * mask, ratio)
        return {"albedo": quantize_to_8bit(blended), "albedo_method": [method] * len(batch),
                "albedo_blend_ratio": ratios}
