"""Batched stages (``stage(batch, rank=None) -> dict`` for ``Dataset.map(stage, batched=True, with_rank=True)``,
and ``stage.forward`` on device tensors inside the build's pipeline) and the training-time transforms."""

from .albedo import AlbedoStage
from .base import DeviceBatch, Stage
from .caption import CaptionStage
from .load import LoadStage
from .normals import NormalsStage
from .on_the_fly import Compose, PairedTransform, RelightBatch, RelightOnTheFly
from .relight_stage import RelightStage
from .segmentation import SegmentationStage

__all__ = [
    "AlbedoStage",
    "CaptionStage",
    "Compose",
    "DeviceBatch",
    "LoadStage",
    "NormalsStage",
    "PairedTransform",
    "RelightBatch",
    "RelightOnTheFly",
    "RelightStage",
    "SegmentationStage",
    "Stage",
]
