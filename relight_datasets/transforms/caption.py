"""Stage 5: a caption of each composite by a vision-language model (off by default)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.loading import resolve_dtype, warn_once
from .base import DeviceBatch, Stage

CAPTIONERS = ("none", "vlm")


def caption_images(composite: torch.Tensor, long_side: int) -> torch.Tensor:
    """Float ``B x 3 x H x W`` in [0, 1] -> uint8 on the same device, shrunk (antialiased) so its long side is at most
    ``long_side`` pixels (0: the size as stored)."""
    height, width = composite.shape[-2:]
    if long_side and max(height, width) > long_side:
        scale = long_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        composite = F.interpolate(composite, size=size, mode="bilinear", align_corners=False, antialias=True)
    return composite.clamp(0, 1).mul(255).round().to(torch.uint8)


class CaptionStage(Stage):
    """``caption``: what ``caption.model`` says about each ``composite`` when asked ``caption.prompt`` (greedy, at
    most ``caption.max_new_tokens`` tokens, the composite shrunk to ``caption.image_side``), or ``""`` with
    ``caption.method: none``. ``vlm`` is forced: a model that cannot load raises
    :class:`~relight_datasets.models.ModelUnavailable`. The model loads once per process and device, in
    :meth:`prepare`."""

    name = "caption"
    inputs = ("input", "composite")
    outputs = ("caption",)

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self._captioners: dict[torch.device, object] = {}

    def prepare(self, rank: int | None = None):
        """The captioner for this process's device (None with ``caption.method: none``), loaded on first call."""
        from ..models.captioner import Captioner

        cfg = self.config.caption
        if cfg.method == "none":
            return None
        device = self.device(rank)
        if device not in self._captioners:
            self._captioners[device] = Captioner(cfg.model, device, resolve_dtype(self.config.dtype, device),
                                                 cfg.prompt, cfg.max_new_tokens, cfg.batch_size)
            if device.type == "cpu":
                warn_once("caption: the VLM runs on the CPU here, which is slow; use a GPU")
        return self._captioners[device]

    def describe(self) -> dict:
        """The captioning model: id, revision, device and dtype (empty when captions are off)."""
        captioner = next(iter(self._captioners.values()), None)
        return {} if captioner is None else {"method": "vlm", **captioner.loaded.describe()}

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        captioner = self.prepare(rank)
        if captioner is None:
            return {"caption": [""] * len(batch)}
        return {"caption": captioner(caption_images(batch.images["composite"], self.config.caption.image_side))}
