"""Model-backed person segmentation: SAM3 from a text prompt, and SAM2 from boxes (a text-prompted detector's, or
the face-prior box of the classical segmenter).

Both take a batch of ``3 x H x W`` uint8 image tensors on the model's device (sizes may differ; a ``B x 3 x H x W``
tensor is such a batch) and return, per image, a :class:`SegmentedPerson` whose mask stays on that device, or None
when no person was found. Each batch is one forward pass; nothing crosses to the host but scores and boxes.

SAM2 runs through ``transformers`` (``Sam2Model``), not the ``sam2`` package: the same ``from_pretrained`` path for
Hub ids and local folders (so tiny test checkpoints exercise exactly the production code), batched box prompts
for whole batches, bf16 through ``dtype``, and no CUDA extension to build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .loading import load_pretrained

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in pixels."""


@dataclass(frozen=True)
class SegmentedPerson:
    mask: torch.Tensor
    """``H x W`` uint8, 255 = person, on the device the segmenter ran on."""
    score: float
    """Model confidence in [0, 1]."""


def upsample_probabilities(probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``N x h x w`` mask probabilities (of images resized to a square) -> ``N x H x W`` float32 at ``size``."""
    return F.interpolate(probabilities[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _binary(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """Probabilities -> uint8 mask (255 above ``threshold``), on their device."""
    return (probabilities > threshold).to(torch.uint8) * 255


def unite_instances(logits: torch.Tensor, presence_logits: torch.Tensor | None, mask_logits: torch.Tensor,
                    score_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM3 instances -> one person mask per image.

    ``logits``: ``B x Q`` instance logits; ``presence_logits``: ``B x 1`` image-level presence (or None);
    ``mask_logits``: ``B x Q x h x w``. An instance's score is ``sigmoid(logit) * sigmoid(presence)``; instances
    scoring above ``score_threshold`` are kept. Returns the pixelwise maximum probability over kept instances
    (``B x h x w``, zero where none is kept), the number kept (``B``) and their mean score (``B``, 0 if none).
    """
    scores = logits.float().sigmoid()
    if presence_logits is not None:
        scores = scores * presence_logits.float().sigmoid().view(-1, 1)
    keep = scores > score_threshold
    union = (mask_logits.float().sigmoid() * keep[..., None, None]).amax(dim=1)
    kept = keep.sum(dim=1)
    return union, kept, (scores * keep).sum(dim=1) / kept.clamp_min(1)


class Sam3TextSegmenter:
    """SAM3 (``transformers.Sam3Model``) prompted with text: every instance scoring above ``score_threshold`` is
    kept and their masks are united into one person mask; the score is the kept instances' mean score.

    An instance's score is its detection probability times the image-level presence probability, as in SAM3.
    """

    method = "sam3"

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype, prompt: str = "person",
                 score_threshold: float = 0.5, mask_threshold: float = 0.5):
        self.loaded = load_pretrained("SAM3 segmentation", "Sam3Model", "Sam3Processor", model_id, device, dtype)
        self.prompt, self.score_threshold, self.mask_threshold = prompt, score_threshold, mask_threshold

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor]) -> list[SegmentedPerson | None]:
        """``images``: ``3 x H x W`` uint8 tensors on the model's device."""
        inputs = self.loaded.preprocess(images, text=[self.prompt] * len(images))
        outputs = self.loaded.model(**inputs)
        presence = getattr(outputs, "presence_logits", None)
        union, kept, mean_scores = unite_instances(outputs.pred_logits, presence, outputs.pred_masks,
                                                   self.score_threshold)
        mean_scores = mean_scores.tolist()
        results: list[SegmentedPerson | None] = []
        for index, image in enumerate(images):
            if kept[index] == 0:
                results.append(None)
                continue
            mask = upsample_probabilities(union[index : index + 1], tuple(image.shape[-2:]))[0]
            results.append(SegmentedPerson(_binary(mask, self.mask_threshold), mean_scores[index]))
        return results


class TextBoxDetector:
    """Zero-shot boxes for a text prompt (``AutoModelForZeroShotObjectDetection``, e.g. Grounding DINO): up to
    ``max_boxes`` boxes scoring above ``threshold`` per image, best first."""

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype, prompt: str = "person",
                 threshold: float = 0.3, max_boxes: int = 4):
        self.loaded = load_pretrained("person detector", "AutoModelForZeroShotObjectDetection", "AutoProcessor",
                                      model_id, device, dtype)
        self.prompt = prompt.strip().rstrip(".") + "."  # Grounding DINO expects lower-case phrases ending in "."
        self.threshold, self.max_boxes = threshold, max_boxes

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor]) -> list[tuple[list[Box], list[float]]]:
        """``images``: ``3 x H x W`` uint8 tensors on the model's device -> per image, (boxes, scores)."""
        inputs = self.loaded.preprocess(images, text=[self.prompt.lower()] * len(images))
        outputs = self.loaded.model(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        detections = self.loaded.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.threshold,
            target_sizes=[tuple(image.shape[-2:]) for image in images])
        found = []
        for detection in detections:
            order = detection["scores"].argsort(descending=True)[: self.max_boxes]
            found.append(([tuple(box) for box in detection["boxes"][order].tolist()],
                          detection["scores"][order].tolist()))
        return found


class Sam2BoxSegmenter:
    """SAM2 (``transformers.Sam2Model``) prompted with boxes: one single-mask prediction per box, united per image.

    Boxes come from ``detector`` when one is given and finds the person, otherwise from ``fallback_box`` (the face
    prior: a head-and-shoulders box around a detected face). An image with no box at all has no person. The score
    is the mean predicted IoU of the box masks.
    """

    method = "sam2"

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype,
                 detector: TextBoxDetector | None = None,
                 fallback_box: Callable[[np.ndarray], Box | None] | None = None, mask_threshold: float = 0.5):
        self.loaded = load_pretrained("SAM2 segmentation", "Sam2Model", "Sam2Processor", model_id, device, dtype)
        self.detector, self.fallback_box, self.mask_threshold = detector, fallback_box, mask_threshold

    def boxes(self, images: Sequence[torch.Tensor], host_images: Sequence[np.ndarray]) -> list[list[Box]]:
        """Box prompts per image (empty when neither the detector nor the face prior finds anyone). ``images``: the
        device tensors the detector reads; ``host_images``: the same images as ``H x W x 3`` uint8 arrays on the
        host, for the face prior (OpenCV)."""
        detected = self.detector(images) if self.detector is not None else [([], [])] * len(images)
        boxes = []
        for image, (found, _) in zip(host_images, detected, strict=True):
            if not found and self.fallback_box is not None and (prior := self.fallback_box(image)) is not None:
                found = [prior]
            boxes.append(found)
        return boxes

    @torch.inference_mode()
    def __call__(self, images: Sequence[torch.Tensor],
                 host_images: Sequence[np.ndarray]) -> list[SegmentedPerson | None]:
        """``images``: ``3 x H x W`` uint8 tensors on the model's device; ``host_images``: the same images as
        ``H x W x 3`` uint8 arrays on the host (read only by the face prior)."""
        boxes = self.boxes(images, host_images)
        results: list[SegmentedPerson | None] = [None] * len(images)
        prompted = [index for index, found in enumerate(boxes) if found]
        if not prompted:
            return results
        # Every image gets the same number of boxes (the processor wants a rectangular batch): repeat the best box,
        # which changes nothing in the union.
        count = max(len(boxes[i]) for i in prompted)
        padded = [[list(b) for b in boxes[i]] + [list(boxes[i][0])] * (count - len(boxes[i])) for i in prompted]
        inputs = self.loaded.preprocess([images[i] for i in prompted], input_boxes=padded)
        outputs = self.loaded.model(**inputs, multimask_output=False)
        probabilities = outputs.pred_masks.float().sigmoid()[:, :, 0]  # B x boxes x h x w
        iou = outputs.iou_scores.float()[:, :, 0]  # B x boxes
        for slot, index in enumerate(prompted):
            real = len(boxes[index])
            union = probabilities[slot, :real].amax(dim=0, keepdim=True)
            mask = upsample_probabilities(union, tuple(images[index].shape[-2:]))[0]
            score = float(iou[slot, :real].clamp(0, 1).mean())
            results[index] = SegmentedPerson(_binary(mask, self.mask_threshold), score)
        return results
