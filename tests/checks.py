"""Checks more than one test file makes: two trainers in the very same state, a call that
releases the GIL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch


def assert_same_state(a, b):
    """``a`` and ``b`` (trainers) hold the same tensors under the same names, to the bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def assert_releases_the_gil(call: Callable[[], object]):
    """While ``call()`` runs, another Python thread keeps running."""
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    thread = threading.Thread(target=count)
    thread.start()
    start = time.perf_counter()
    call()
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    # A thread blocked on the GIL would barely tick; a free one ticks every millisecond or so.
    assert ticks > 0.2 * elapsed * 1000, (ticks, elapsed)
