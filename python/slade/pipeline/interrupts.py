"""Ctrl-C during a training step, held until the step is recorded.

A real SIGINT nearly always arrives while Rust runs a step with the GIL released, and Python
raises KeyboardInterrupt as soon as the step returns: the trainer has taken the step but
its metrics never reach the history, and a checkpoint written then has one history row too
few. Inside :meth:`HeldInterrupts.held` SIGINT is only recorded; :meth:`raise_pending`
then hands it to the previous handler (by default: KeyboardInterrupt) where the training
loop chooses. Outside the main thread, where Python runs no signal handler, nothing is held.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class HeldInterrupts:
    """While entered, SIGINT inside :meth:`held` waits for :meth:`raise_pending`."""

    def __init__(self) -> None:
        self._previous: Callable[[int, Any], Any] | None = None
        self._holding = False
        self._pending: tuple[int, Any] | None = None

    def __enter__(self) -> HeldInterrupts:
        previous = signal.getsignal(signal.SIGINT)
        if callable(previous) and threading.current_thread() is threading.main_thread():
            self._previous = previous
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self._holding:
            self._pending = (signum, frame)
        elif self._previous is not None:
            self._previous(signum, frame)

    @contextmanager
    def held(self) -> Iterator[None]:
        """SIGINT arriving inside waits for :meth:`raise_pending`."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def raise_pending(self) -> None:
        """Hands a held SIGINT to the previous handler (KeyboardInterrupt by default)."""
        if self._pending is not None and self._previous is not None:
            signum, frame = self._pending
            self._pending = None
            self._previous(signum, frame)
