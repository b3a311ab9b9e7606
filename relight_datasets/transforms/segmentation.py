"""Stage 1: person segmentation (SAM3 text prompt, SAM2 box prompts, the shipped MediaPipe person model, or the
weight-free classical segmenter)."""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np
import torch

from ..models.loading import ModelUnavailable, load_or_fall_back, resolve_dtype, warn_once
from ..models.segmenters import SegmentedPerson
from ..ops.classical_segmentation import detect_face_box, person_prior_box, segment_person_classical
from ..ops.learned_segmentation import mirror_consensus, person_mask_from_probability
from ..rng import row_seed
from .base import SKIP_COLUMN, DeviceBatch, Stage, ThreadPool, uint8_to_unit

SEGMENTERS = ("auto", "sam3", "sam2", "mediapipe", "classical")
AUTO_ORDER = ("sam3", "sam2", "mediapipe", "classical")
SEGMENTATION_STREAM = "segmentation"
"""Name of the per-row random stream that seeds GrabCut (:func:`relight_datasets.rng.row_seed`)."""


def face_prior_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """Head-and-shoulders box ``(x0, y0, x1, y1)`` around the most likely face, or None when no face is found."""
    face = detect_face_box(image)
    return None if face is None else person_prior_box(face, *image.shape[:2])


class ClassicalSegmenter:
    """Haar face prior refined by GrabCut, one image per core (GrabCut releases the GIL). OpenCV works on the host:
    it reads the decoded ``H x W x 3`` uint8 arrays as they are (no copy), and each mask found is copied to the
    device once.

    OpenCV's own worker threads are turned off (``cv2.setNumThreads(1)``, process-wide): with one image per core
    already, they only oversubscribe the cores (measured: 10-15 % slower at 512 px on 2 cores)."""

    method = "classical"

    def __init__(self, config):
        self.config = config
        self.pool = ThreadPool()
        cv2.setNumThreads(1)

    def _segment(self, image_and_id):
        image, image_id = image_and_id
        cfg = self.config.segmentation.classical
        return segment_person_classical(image, work_size=cfg.work_size, grabcut_iterations=cfg.grabcut_iterations,
                                        seed=row_seed(self.config.seed, image_id, SEGMENTATION_STREAM) % (2**31))

    def __call__(self, images: list[np.ndarray], image_ids: list[str],
                 device: torch.device) -> list[SegmentedPerson | None]:
        """Host ``H x W x 3`` uint8 images -> per image, the person with its mask on ``device``, or None."""
        found = self.pool.map(self._segment, list(zip(images, image_ids, strict=True)))
        return [None if result is None else
                SegmentedPerson(torch.tensor(result.mask, device=device, dtype=torch.uint8), result.score)
                for result in found]


class MediaPipeSegmenter:
    """MediaPipe's selfie segmentation (shipped with the package, run on the CPU through LiteRT), fused with the image
    by :mod:`relight_datasets.ops.learned_segmentation`: mirror consensus, guided refinement, threshold
    ``segmentation.mediapipe_threshold``. One image per thread; each mask found is copied to the device once.
    Raises :class:`~relight_datasets.models.ModelUnavailable` when the runtime or the model file is missing."""

    method = "mediapipe"

    def __init__(self, config):
        from ..models import mediapipe

        self.config = config
        self.pool = ThreadPool()
        try:
            mediapipe.interpreter("selfie_segmentation")
        except (ImportError, mediapipe.ModelIntegrityError) as error:
            file_name = mediapipe.MODEL_FILES["selfie_segmentation"][0]
            raise ModelUnavailable("segmentation", file_name, str(error).splitlines()[0]) from error
        self._person_probability = mediapipe.person_probability

    def _segment(self, image: np.ndarray) -> SegmentedPerson | None:
        probability, mirrored = self._person_probability([image, np.ascontiguousarray(image[:, ::-1])])
        consensus = mirror_consensus(probability, mirrored)
        mask = person_mask_from_probability(image, consensus, self.config.segmentation.mediapipe_threshold)
        inside = mask > 0
        if not inside.any():
            return None
        return SegmentedPerson(torch.from_numpy(mask), float(consensus[inside].mean()))

    def __call__(self, images: list[np.ndarray], device: torch.device) -> list[SegmentedPerson | None]:
        """Host ``H x W x 3`` uint8 images -> per image, the people with their mask on ``device``, or None."""
        found = self.pool.map(self._segment, images)
        return [None if person is None else SegmentedPerson(person.mask.to(device), person.score) for person in found]


class SegmentationStage(Stage):
    """Person mask (``1 x H x W``, 1 = person; stored as an ``H x W`` uint8 image, 255 = person) for each ``input``.

    ``segmentation.method``: ``sam3``, ``sam2``, ``mediapipe`` or ``classical`` forces one segmenter (a model that
    cannot load raises :class:`~relight_datasets.models.ModelUnavailable`); ``auto`` takes the first of sam3, sam2,
    mediapipe, classical that loads and logs each fallback reason once. Models load once per process and device,
    on first use or in :meth:`prepare`. Rows where nothing is found, or whose mask covers less than
    ``segmentation.min_coverage`` of the image, are skipped with reason ``no_person``. ``segmentation_method``
    records what made each mask.
    """

    name = "segmentation"
    outputs = ("mask", "segmentation_method", "segmentation_score", "mask_coverage")

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self._segmenters: dict[torch.device, object] = {}
        self.fallbacks: list[dict] = []
        self.detector_fallback: dict | None = None

    def _make(self, method: str, device: torch.device):
        from ..models.segmenters import Sam2BoxSegmenter, Sam3TextSegmenter, TextBoxDetector

        cfg = self.config.segmentation
        dtype = resolve_dtype(self.config.dtype, device)
        if method == "sam3":
            return Sam3TextSegmenter(cfg.sam3_model, device, dtype, cfg.text_prompt, cfg.score_threshold,
                                     cfg.mask_threshold)
        if method == "sam2":
            segmenter = Sam2BoxSegmenter(cfg.sam2_model, device, dtype, fallback_box=face_prior_box,
                                         mask_threshold=cfg.mask_threshold)
            if cfg.detector_model:
                try:
                    segmenter.detector = TextBoxDetector(cfg.detector_model, device, dtype, cfg.text_prompt,
                                                         cfg.detector_threshold, cfg.max_people)
                except ModelUnavailable as error:
                    warn_once(f"{error}; SAM2 takes its boxes from the face prior instead")
                    self.detector_fallback = {"model": error.model_id, "reason": error.reason}
            return segmenter
        if method == "mediapipe":
            return MediaPipeSegmenter(self.config)
        return ClassicalSegmenter(self.config)

    def prepare(self, rank: int | None = None):
        """The segmenter for this process's device, loaded on first call."""
        device = self.device(rank)
        if device not in self._segmenters:
            forced = self.config.segmentation.method
            for method in AUTO_ORDER if forced == "auto" else (forced,):
                segmenter = load_or_fall_back(partial(self._make, method, device), forced != "auto", method,
                                              f"segmentation: {method} unavailable, falling back", self.fallbacks)
                if segmenter is not None:
                    self._segmenters[device] = segmenter
                    if method in ("sam3", "sam2") and device.type == "cpu":
                        warn_once(f"segmentation: {method} runs on the CPU here, which takes tens of seconds per "
                                  "image; use a GPU, or --segmenter classical for a fast CPU build")
                    break
        return self._segmenters[device]

    def describe(self) -> dict:
        """What segments the rows: method, model id, revision, dtype, and the fallbacks taken on the way."""
        segmenter = next(iter(self._segmenters.values()), None)
        if segmenter is None:
            return {}
        info = {"method": segmenter.method}
        loaded = getattr(segmenter, "loaded", None)
        if loaded is not None:
            info.update(loaded.describe())
        detector = getattr(segmenter, "detector", None)
        if segmenter.method == "sam2":
            info["boxes"] = ({"detector": detector.loaded.describe()} if detector is not None
                             else {"face_prior": self.detector_fallback or "no detector configured"})
        if self.fallbacks:
            info["fallbacks"] = self.fallbacks
        return info

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        segmenter = self.prepare(rank)
        if segmenter.method == "classical":
            results = segmenter(batch.host_input, batch.image_ids, batch.device)
        elif segmenter.method == "mediapipe":
            results = segmenter(batch.host_input, batch.device)
        elif segmenter.method == "sam2":
            results = segmenter(batch.input_uint8, batch.host_input)
        else:
            results = segmenter(batch.input_uint8)
        nobody = torch.zeros(batch.input_uint8.shape[-2:], device=batch.device, dtype=torch.uint8)
        masks = uint8_to_unit(torch.stack([nobody if r is None else r.mask for r in results])[:, None])
        height, width = masks.shape[-2:]
        coverage = [count / (height * width) for count in (masks > 0.5).sum(dim=(1, 2, 3)).tolist()]
        minimum = self.config.segmentation.min_coverage
        found = [r is not None and c >= minimum for r, c in zip(results, coverage, strict=True)]
        return {
            "mask": masks,
            "segmentation_method": [segmenter.method] * len(batch),
            "segmentation_score": [float(r.score) if r is not None else 0.0 for r in results],
            "mask_coverage": coverage,
            SKIP_COLUMN: ["" if ok else "no_person" for ok in found],
        }
