"""relight-datasets: build versioned Hugging Face datasets of portrait relighting pairs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relight-datasets")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "regenerate_pairs", "relight"]


def __getattr__(name: str):
    """``relight_datasets.relight`` and ``regenerate_pairs`` are imported on first use: ``import relight_datasets``
    (and the command line's start-up) stays free of torch and datasets."""
    if name in ("relight", "regenerate_pairs"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
