"""Surface normals for shading, estimated offline from the person mask."""

from __future__ import annotations

from ..ops.color import float_to_uint8, uint8_to_float
from ..ops.normals import encode_normals, normals_from_mask
from .base import Stage, group_by_shape, to_uint8_array

NORMAL_ESTIMATORS = ("auto", "classical")


class NormalsStage(Stage):
    """RGB-encoded normals (``H x W x 3`` uint8, see :func:`relight_datasets.ops.normals.encode_normals`).

    ``classical`` (and ``auto`` while no depth model is configured) inflates the silhouette into a smooth bulge, so
    the new light wraps around the person's outline (``normals_method = "mask_inflation"``).
    """

    name = "normals"
    outputs = ("normals", "normals_method")

    def process(self, batch, rows, outputs, skip, rank):
        device = self.device(rank)
        masks = [to_uint8_array(m) if m is not None else None for m in batch["mask"]]
        for group in group_by_shape(masks, rows).values():
            mask = uint8_to_float([masks[r] for r in group], device)
            normals = normals_from_mask(mask, self.config.normals.inflation_sigma, self.config.normals.edge_tilt_deg)
            for row, encoded in zip(group, float_to_uint8(encode_normals(normals)), strict=True):
                outputs["normals"][row] = encoded
                outputs["normals_method"][row] = "mask_inflation"
