"""Pretrained models behind the model-backed stages, loaded once per process through ``from_pretrained``."""

from .captioner import Captioner
from .depth import DepthEstimator
from .loading import LoadedModel, ModelUnavailable, load_pretrained, resolve_dtype
from .segmenters import Sam2BoxSegmenter, Sam3TextSegmenter, SegmentedPerson, TextBoxDetector

__all__ = [
    "Captioner",
    "DepthEstimator",
    "LoadedModel",
    "ModelUnavailable",
    "Sam2BoxSegmenter",
    "Sam3TextSegmenter",
    "SegmentedPerson",
    "TextBoxDetector",
    "load_pretrained",
    "resolve_dtype",
]
