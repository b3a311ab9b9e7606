"""Producing the dataset: sources, the per-batch pipeline, resumable sharded builds, the ``datasets`` builder,
the card and the Hub push."""

from .build import BuildOptions, build_dataset
from .features import FEATURES
from .relight_pairs import RelightPairs, RelightPairsConfig

__all__ = ["FEATURES", "BuildOptions", "RelightPairs", "RelightPairsConfig", "build_dataset"]
