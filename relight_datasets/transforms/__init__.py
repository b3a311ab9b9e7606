"""Batched map transforms: each stage is a callable ``stage(batch, rank=None) -> dict`` for
``Dataset.map(stage, batched=True, with_rank=True)``."""

from .albedo import AlbedoStage
from .base import Stage
from .degradation import DegradationStage
from .instruction import InstructionStage
from .load import LoadStage
from .normals import NormalsStage
from .recombination import RecombinationStage
from .segmentation import SegmentationStage

__all__ = [
    "AlbedoStage",
    "DegradationStage",
    "InstructionStage",
    "LoadStage",
    "NormalsStage",
    "RecombinationStage",
    "SegmentationStage",
    "Stage",
]
