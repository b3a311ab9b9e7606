"""A test harness that makes "a tensor created without its device" fail on a CPU-only machine.

The bug class: ``torch.tensor([0.02, 0.98])`` inside an op lands on the CPU while the data is on a GPU, and the op
fails only on a GPU (``normals_from_depth``'s quantile probabilities, issue 13). On a CPU everything is on the CPU,
so the mistake is invisible unless something checks for it. :func:`device_discipline` is a context manager built on
:class:`torch.overrides.TorchFunctionMode` that sees every torch call made on its thread and checks two rules:

1. **One device per call.** Every tensor argument of a torch call (positional, keyword, inside lists, tuples and
   dicts, ``out=`` included) is on the same device. Strict: a 0-dim CPU tensor next to a tensor on another device
   counts, although CUDA would accept it. The explicit transfers ``Tensor.to``, ``Tensor.copy_`` and
   ``Tensor.type_as`` are exempt: moving data between devices is what they are for.
2. **Factories name their device.** A tensor factory (``torch.tensor``, ``zeros``, ``arange``, ``rand``, ...; see
   :data:`FACTORIES`) called from ``relight_datasets`` code (or the folders given as ``checked``) passes
   ``device=``. ``*_like`` and ``new_*`` inherit their device and ``torch.from_numpy`` is the host side by
   definition, so they are not factories here. Calls from other packages (transformers' internals) are not ours
   and are not checked. CPU random draws with a
   ``generator=`` must say ``device="cpu"`` like any other, so the choice of the host is visible in the code.

With ``default_device="meta"`` the run also sets torch's default device to ``meta``: any tensor created without a
device, by whatever route (a factory missing from the list, a helper in another package), lands on ``meta`` and is
caught by rule 1 when it meets the CPU data. Use it around code whose third-party calls create no tensors of their
own (the pure ops, the weight-free stages); a model's own internals would land on ``meta`` too.

A violation raises :class:`DeviceDisciplineError` naming the torch function, the devices or the missing argument,
and the calling ``file:line`` (the innermost frame outside torch; the innermost ``relight_datasets`` frame too when
that is a different one). The error derives from ``BaseException``, as pytest's own outcomes do, so the pipeline's
``except Exception`` retry-and-skip paths cannot turn it into a skipped row; violations are also recorded, and a
violation that something swallowed anyway is raised again when the block exits. With ``raise_at_once=False``
nothing is raised inside the block: every violation is recorded and all of them are raised together at exit, which
lists every offending site of a run at once.

The mode is per thread (torch keeps its function-mode stack in thread-local state): calls made on other threads,
such as a ``ThreadPoolExecutor``'s workers, are not checked.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import relight_datasets

_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
PACKAGE_DIR = Path(relight_datasets.__file__).resolve().parent
"""The code checked by default: ``relight_datasets``."""
_REPOSITORY_DIR = str(PACKAGE_DIR.parent) + os.sep
_THIS_FILE = str(Path(__file__).resolve())

FACTORIES = frozenset({
    torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor,
    torch.zeros, torch.ones, torch.full, torch.empty, torch.empty_strided, torch.empty_permuted,
    torch.arange, torch.linspace, torch.logspace, torch.eye, torch.tril_indices, torch.triu_indices,
    torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.bartlett_window, torch.blackman_window, torch.hamming_window, torch.hann_window, torch.kaiser_window,
})
"""Torch functions that create a tensor from Python values or a shape, on the default device unless told."""

TRANSFERS = frozenset({torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.type_as})
"""Calls whose purpose is to move data between devices: rule 1 does not apply to them."""


class DeviceDisciplineError(BaseException):
    """A torch call broke the device discipline; the message names the call, the rule and the caller."""


@dataclass
class DeviceDisciplineRecord:
    """What :func:`device_discipline` saw: one message per violation, in order."""

    violations: list[str] = field(default_factory=list)


def _function_name(func) -> str:
    """``torch.quantile``, ``Tensor.add``, ... for a function as torch function modes receive it."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    for prefix, readable in (("_VariableFunctionsClass.", "torch."), ("TensorBase.", "Tensor.")):
        if name.startswith(prefix):
            return readable + name.removeprefix(prefix)
    module = getattr(func, "__module__", None)
    return f"{module}.{name}" if module and not name.startswith(("Tensor.", "torch.")) else name


def _tensors(value) -> Iterator[torch.Tensor]:
    """Every tensor in ``value``, looking inside lists, tuples and dict values."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _callers(checked: tuple[str, ...]) -> tuple[str, str | None]:
    """``file:line`` of the innermost frame outside torch and this harness, and of the innermost frame in a
    ``checked`` folder (None when there is none); files in this repository relative to its root."""
    frame = sys._getframe(1)
    caller = None
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and path != _THIS_FILE:
            location = f"{path.removeprefix(_REPOSITORY_DIR)}:{frame.f_lineno}"
            caller = caller or location
            if path.startswith(checked):
                return caller, location
        frame = frame.f_back
    return caller or "<unknown>", None


def _where(caller: str, ours: str | None) -> str:
    return caller if ours is None or ours == caller else f"{caller} (called from {ours})"


class _DisciplineMode(TorchFunctionMode):
    """The torch function mode behind :func:`device_discipline`."""

    def __init__(self, record: DeviceDisciplineRecord, checked: tuple[str, ...], raise_at_once: bool):
        super().__init__()
        self.record = record
        self.checked = checked
        self.raise_at_once = raise_at_once

    def _violation(self, message: str) -> None:
        self.record.violations.append(message)
        if self.raise_at_once:
            raise DeviceDisciplineError(message)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in TRANSFERS:
            devices = {tensor.device for tensor in _tensors((args, kwargs))}
            if len(devices) > 1:
                found = ", ".join(sorted(str(device) for device in devices))
                self._violation(f"{_function_name(func)} got tensors on several devices ({found}) at "
                                f"{_where(*_callers(self.checked))}")
        if func in FACTORIES and kwargs.get("device") is None:
            caller, ours = _callers(self.checked)
            if ours is not None and ours == caller:
                self._violation(f"{_function_name(func)} creates a tensor without device= at {caller}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def device_discipline(
    default_device: str | None = None, checked: tuple[Path, ...] = (PACKAGE_DIR,), raise_at_once: bool = True
) -> Iterator[DeviceDisciplineRecord]:
    """Check the device discipline (see the module docstring) for the torch calls made on this thread in the block.

    ``default_device``: torch's default device inside the block (``"meta"`` sends every tensor created without a
    device there). ``checked``: the folders whose factory calls must pass ``device=`` (rule 2; rule 1 applies to
    every call). ``raise_at_once``: raise at the first violation (default), or record them all and raise at exit.
    Yields the :class:`DeviceDisciplineRecord`; raises :class:`DeviceDisciplineError` at exit when any violation
    was recorded, so one swallowed inside the block still fails the test.
    """
    record = DeviceDisciplineRecord()
    with contextlib.ExitStack() as stack:
        if default_device is not None:
            stack.enter_context(torch.device(default_device))
        folders = tuple(str(Path(folder).resolve()) + os.sep for folder in checked)
        stack.enter_context(_DisciplineMode(record, folders, raise_at_once))
        yield record
    if record.violations:
        counts = Counter(record.violations)  # in order of first occurrence
        lines = [message if count == 1 else f"{message} ({count} times)" for message, count in counts.items()]
        summary = f"{len(record.violations)} device discipline violation(s), {len(counts)} distinct:"
        raise DeviceDisciplineError("\n".join([summary, *lines]))
