"""Loading pretrained models once per process, with one-line reasons when a model cannot be had.

A model is named by a Hub id or a local folder; both go through ``from_pretrained`` (``transformers`` models and
processors, or whole ``diffusers`` pipelines). Before anything is fetched the
Hub is checked once per process (a short HEAD request, skipped when ``HF_HUB_OFFLINE`` is set): when it cannot be
reached, models load from the local cache only, so an unreachable Hub costs a few seconds at most, never a hang.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelUnavailable(RuntimeError):
    """A model could not be loaded. ``reason`` is one line a user can act on."""

    def __init__(self, role: str, model_id: str, reason: str):
        super().__init__(f"{role} model {model_id}: {reason}")
        self.role, self.model_id, self.reason = role, model_id, reason


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on its device, its processor, and what identifies the weights. ``model`` is a
    ``transformers`` model, or a ``diffusers`` pipeline (then ``processor`` is None: the pipeline preprocesses)."""

    model: Any
    processor: object | None
    model_id: str
    revision: str
    device: torch.device
    dtype: torch.dtype

    def preprocess(self, images: Sequence[torch.Tensor], **kwargs) -> dict:
        """``processor(images=..., **kwargs)`` for ``3 x H x W`` uint8 tensors already on the model's device: resized
        and normalised there, ``pixel_values`` cast to the model's dtype, box coordinates left float32 (bf16 would
        round a 1024 px coordinate to a multiple of 4). Tensors the processor makes elsewhere (a tokenizer's ids
        start on the host) are moved to the model's device."""
        processed = self.processor(images=list(images), return_tensors="pt", device=self.device, **kwargs)
        return {name: self._on_device(value, self.dtype if name == "pixel_values" else value.dtype)
                if isinstance(value, torch.Tensor) else value for name, value in processed.items()}

    def _on_device(self, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return value.to(dtype=dtype) if value.device == self.device else value.to(self.device, dtype)

    def describe(self) -> dict:
        return {"model": self.model_id, "revision": self.revision, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch.")}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not at import time)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().lower() in {"1", "true", "yes", "on"}


@cache
def hub_reachable() -> bool:
    """Whether the Hub endpoint answers within ``PROBE_TIMEOUT_S`` (checked once per process)."""
    if hub_offline():
        return False
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - any failure means "use the local cache"
        logger.info("the Hub at %s is unreachable (%s); loading models from the local cache only",
                    constants.ENDPOINT, type(error).__name__)
        return False
    return True


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on a CUDA device that supports it, else float32; or the named dtype."""
    if name == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    return DTYPES[name]


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def describe_failure(error: BaseException, model_id: str, local_only: bool) -> str:
    """One line saying why loading ``model_id`` failed and what to do about it."""
    from huggingface_hub import errors

    for item in _chain(error):
        if isinstance(item, errors.GatedRepoError):
            return (f"gated on the Hub: request access at https://huggingface.co/{model_id}, then log in with "
                    "`hf auth login` (or set HF_TOKEN)")
        if isinstance(item, torch.cuda.OutOfMemoryError):
            return "out of GPU memory while loading (try --dtype bfloat16 or a smaller model)"
        if isinstance(item, ImportError | AttributeError) and "transformers" in str(item):
            return f"missing package support ({item}); upgrade transformers"
        if isinstance(item, ImportError) and "diffusers" in str(item):
            return f"missing package support ({item}); pip install 'relight-datasets[learned]'"
        if isinstance(item, errors.RepositoryNotFoundError):
            return "no such model on the Hub and no such local folder (check the id or path)"
        if isinstance(item, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
            break
    if local_only and not Path(model_id).is_dir():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "no network (the Hub is unreachable)"
        return f"{why} and the model is not in the local cache (download it once with network access)"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'failed to load'}"


def import_transformers(*names: str) -> list:
    """The named ``transformers`` classes, or an ImportError naming the installed version that lacks them."""
    import transformers

    missing = [name for name in names if not hasattr(transformers, name)]
    if missing:
        raise ImportError(f"transformers {transformers.__version__} has no {', '.join(missing)}")
    return [getattr(transformers, name) for name in names]


def import_diffusers(name: str):
    """``diffusers.<name>``, or an ImportError saying that diffusers (or that class in it) is missing."""
    try:
        import diffusers
    except ImportError as error:
        raise ImportError("diffusers is not installed") from error
    if not hasattr(diffusers, name):
        raise ImportError(f"diffusers {diffusers.__version__} has no {name} (needs diffusers>=0.33)")
    return getattr(diffusers, name)


def disable_diffusers_progress_bars() -> None:
    """Turn off ``diffusers``' own progress bars (loading and saving pipelines), when it is installed."""
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        return
    diffusers_logging.disable_progress_bar()


def _revision(model: torch.nn.Module, model_id: str) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return commit
    return "local" if Path(model_id).is_dir() else "unknown"


_SNAPSHOT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def _pipeline_revision(pipeline, model_id: str) -> str:
    """The Hub commit a pipeline was loaded from (its components live in the cache's ``snapshots/<commit>``), or
    ``local`` for a folder."""
    if Path(model_id).is_dir():
        return "local"
    match = _SNAPSHOT.search(str(getattr(pipeline.unet.config, "_name_or_path", "")))
    return match.group(1) if match else "unknown"


_LOADED: dict[tuple, LoadedModel] = {}


def load_pretrained(role: str, model_class: str, processor_class: str, model_id: str, device: torch.device,
                    dtype: torch.dtype) -> LoadedModel:
    """``transformers.<model_class>`` and ``<processor_class>`` from ``model_id`` (Hub id or folder) on ``device``
    in ``dtype``, in eval mode; cached, so each model loads once per process. Raises :class:`ModelUnavailable`."""
    key = (model_class, processor_class, model_id, str(device), dtype)
    if key in _LOADED:
        return _LOADED[key]
    local_only = not Path(model_id).is_dir() and not hub_reachable()
    try:
        model_cls, processor_cls = import_transformers(model_class, processor_class)
        processor = processor_cls.from_pretrained(model_id, local_files_only=local_only)
        model = model_cls.from_pretrained(model_id, dtype=dtype, local_files_only=local_only)
        model = model.to(device).eval()
    except Exception as error:  # noqa: BLE001 - every failure becomes one line (and a fallback, or exit 2)
        raise ModelUnavailable(role, model_id, describe_failure(error, model_id, local_only)) from error
    loaded = LoadedModel(model, processor, model_id, _revision(model, model_id), device, dtype)
    _LOADED[key] = loaded
    logger.info("%s: loaded %s (%s) on %s in %s", role, model_id, loaded.revision, device, dtype)
    return loaded


def load_diffusers_pipeline(role: str, pipeline_class: str, model_id: str, device: torch.device,
                            dtype: torch.dtype) -> LoadedModel:
    """``diffusers.<pipeline_class>`` from ``model_id`` (Hub id or folder) on ``device`` in ``dtype``, progress bars
    off; cached, so each pipeline loads once per process. Raises :class:`ModelUnavailable`."""
    key = (pipeline_class, None, model_id, str(device), dtype)
    if key in _LOADED:
        return _LOADED[key]
    local_only = not Path(model_id).is_dir() and not hub_reachable()
    try:
        with warnings.catch_warnings():  # newer diffusers also read ``dtype`` and warn that ``torch_dtype`` will go
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipeline = import_diffusers(pipeline_class).from_pretrained(model_id, torch_dtype=dtype,
                                                                        local_files_only=local_only)
        pipeline = pipeline.to(device)
    except Exception as error:  # noqa: BLE001 - every failure becomes one line (and a fallback, or exit 2)
        raise ModelUnavailable(role, model_id, describe_failure(error, model_id, local_only)) from error
    pipeline.set_progress_bar_config(disable=True)
    loaded = LoadedModel(pipeline, None, model_id, _pipeline_revision(pipeline, model_id), device, dtype)
    _LOADED[key] = loaded
    logger.info("%s: loaded %s (%s) on %s in %s", role, model_id, loaded.revision, device, dtype)
    return loaded


_WARNED: set[str] = set()


def load_or_fall_back(load: Callable[[], T], forced: bool, method: str, warning: str,
                      fallbacks: list[dict]) -> T | None:
    """``load()``; when its model cannot load (:class:`ModelUnavailable`) the error is raised again if ``method`` was
    forced, else ``"<warning>: <error>"`` is logged once, the fallback is recorded in ``fallbacks`` (method, model,
    reason) and None is returned."""
    try:
        return load()
    except ModelUnavailable as error:
        if forced:
            raise
        warn_once(f"{warning}: {error}")
        fallbacks.append({"method": method, "model": error.model_id, "reason": error.reason})
        return None


def warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)
