"""Batched map transforms: each stage is a callable ``stage(batch, rank=None) -> dict`` for
``Dataset.map(stage, batched=True, with_rank=True)``."""

from .albedo import AlbedoStage
from .base import Stage
from .degradation import DegradationStage
from .instruction import InstructionStage
from .load import LoadStage
from .normals import NormalsStage
from .on_the_fly import Compose, PairedTransform, RelightBatch, RelightOnTheFly
from .recombination import RecombinationStage
from .segmentation import SegmentationStage

__all__ = [
    "AlbedoStage",
    "Compose",
    "DegradationStage",
    "InstructionStage",
    "LoadStage",
    "NormalsStage",
    "PairedTransform",
    "RecombinationStage",
    "RelightBatch",
    "RelightOnTheFly",
    "SegmentationStage",
    "Stage",
]
