"""Stopping a build on SIGINT (Ctrl-C) or SIGTERM without losing finished chunks or logging false skips.

The first signal only sets a flag: the batches in flight finish, the current chunk is abandoned (finished chunks stay
on disk) and the build raises :class:`BuildInterrupted`, which the command line turns into one line and exit code
128 + signal (130, 143). A second signal ends the process at once with ``os._exit``: no Python unwinding, no C++
static destructors, so no "terminate called without an active exception" from the thread pools of torch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

INTERRUPTED_MESSAGE = "relight-build: interrupted; run the same command to resume"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BuildInterrupted(Exception):
    """The build stopped on a signal; finished chunks are kept."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager catching SIGINT and SIGTERM for the block (main thread only; elsewhere it does nothing).
    ``check()`` raises :class:`BuildInterrupted` once a signal came."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            sys.stdout.flush()
            print(INTERRUPTED_MESSAGE, file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        if self.announce:
            print("relight-build: stopping once the work in progress is saved (again to stop at once)", file=sys.stderr,
                  flush=True)

    def check(self) -> None:
        if self.signum is not None:
            raise BuildInterrupted(self.signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            return  # stopping: a further signal while the command winds down still ends it at once
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
