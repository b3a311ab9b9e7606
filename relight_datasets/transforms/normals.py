"""Surface normals for shading: from a monocular depth network, or estimated offline from the person mask."""

from __future__ import annotations

import torch

from ..models.loading import ModelUnavailable, resolve_dtype, warn_once
from ..ops.normals import encode_normals, normals_from_depth, normals_from_mask
from ..relighting import quantize_to_8bit
from .base import DeviceBatch, Stage

NORMAL_ESTIMATORS = ("auto", "depth", "classical")


class NormalsStage(Stage):
    """RGB-encoded normals (``3 x H x W`` on the 8-bit grid, see :func:`relight_datasets.ops.normals.encode_normals`).

    ``depth`` runs ``normals.depth_model`` on the input image and differentiates its relative depth, normalised so
    the result depends on neither the model's units nor the image size (``normals_method = "depth"``).
    ``classical`` inflates the silhouette into a smooth bulge (``"mask_inflation"``). ``auto`` uses depth when the
    model loads and falls back to the mask otherwise (logging why once); ``depth`` forces it (a model that cannot
    load raises :class:`~relight_datasets.models.ModelUnavailable`).
    """

    name = "normals"
    inputs = ("input", "mask")
    outputs = ("normals", "normals_method")

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self._estimators: dict[torch.device, object] = {}
        self.fallback: dict | None = None

    def prepare(self, rank: int | None = None):
        """The depth estimator for this process's device (None: mask normals), loaded on first call."""
        from ..models.depth import DepthEstimator

        device = self.device(rank)
        method, model_id = self.config.normals.method, self.config.normals.depth_model
        if device not in self._estimators:
            estimator = None
            if method != "classical":
                try:
                    estimator = DepthEstimator(model_id, device, resolve_dtype(self.config.dtype, device))
                except ModelUnavailable as error:
                    if method == "depth":
                        raise
                    warn_once(f"normals: depth unavailable, falling back to mask normals: {error}")
                    self.fallback = {"method": "depth", "model": error.model_id, "reason": error.reason}
            self._estimators[device] = estimator
        return self._estimators[device]

    def describe(self) -> dict:
        if not self._estimators:
            return {}
        estimator = next(iter(self._estimators.values()))
        if estimator is None:
            return {"method": "mask_inflation", **({"fallbacks": [self.fallback]} if self.fallback else {})}
        return {"method": "depth", **estimator.loaded.describe()}

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        estimator = self.prepare(rank)
        cfg = self.config.normals
        if estimator is None:
            normals = normals_from_mask(batch.images["mask"], cfg.inflation_sigma, cfg.edge_tilt_deg)
            method = "mask_inflation"
        else:
            depth = estimator(batch.input_uint8)
            normals = normals_from_depth(depth, estimator.larger_is_closer, cfg.depth_relief)
            method = "depth"
        return {"normals": quantize_to_8bit(encode_normals(normals)), "normals_method": [method] * len(batch)}
