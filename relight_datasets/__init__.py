"""relight-datasets: build versioned Hugging Face datasets of portrait relighting pairs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("relight-datasets")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
