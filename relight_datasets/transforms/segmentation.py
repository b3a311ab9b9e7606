"""Stage 1: person segmentation."""

from __future__ import annotations

from ..ops.classical_segmentation import segment_person_classical
from ..rng import row_seed
from .base import Stage, ThreadPool, to_uint8_array

SEGMENTERS = ("auto", "classical")


class SegmentationStage(Stage):
    """Person mask (``H x W`` uint8, 255 = person) for each ``input`` image.

    ``auto`` uses the best available segmenter; with no model-backed segmenter configured that is the weight-free
    classical one (Haar face prior refined by GrabCut). Rows with no person found, or a mask covering less than
    ``segmentation.min_coverage`` of the image, are skipped with reason ``no_person``.
    """

    name = "segmentation"
    outputs = ("mask", "segmentation_method", "segmentation_score", "mask_coverage")

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.pool = ThreadPool()  # GrabCut releases the GIL: one image per core

    def _segment_classical(self, image_and_id):
        image, image_id = image_and_id
        cfg = self.config.segmentation.classical
        return segment_person_classical(
            to_uint8_array(image), work_size=cfg.work_size, grabcut_iterations=cfg.grabcut_iterations,
            seed=row_seed(self.config.seed, image_id, self.name) % (2**31),
        )

    def process(self, batch, rows, outputs, skip, rank):
        cfg = self.config.segmentation
        results = self.pool.map(self._segment_classical, [(batch["input"][r], batch["image_id"][r]) for r in rows])
        for row, result in zip(rows, results, strict=True):
            coverage = 0.0 if result is None else float((result.mask > 127).mean())
            if result is None or coverage < cfg.min_coverage:
                skip[row] = "no_person"
                continue
            outputs["mask"][row] = result.mask
            outputs["segmentation_method"][row] = "classical"
            outputs["segmentation_score"][row] = float(result.score)
            outputs["mask_coverage"][row] = coverage
