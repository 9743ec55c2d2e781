"""A real Ctrl-C (SIGINT) in the middle of a trainer's step, while Rust runs it with the GIL
released: the trainer tests assert what the README promises then."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="Python handles signals in the main thread only",
)


def sigint_during_a_step(step: Callable[[], object], warmup: int = 2) -> int:
    """Calls ``step`` until it raises KeyboardInterrupt, which it must; after ``warmup``
    calls another thread sends SIGINT to this process half the fastest call's time into
    the next call, when Rust runs that step. Returns how many calls returned."""
    durations = [_seconds(step) for _ in range(warmup)]
    timer = threading.Timer(min(durations) / 2, os.kill, (os.getpid(), signal.SIGINT))
    returned = warmup
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(1000):
                step()
                returned += 1
    finally:
        timer.cancel()
    return returned


def _seconds(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began
