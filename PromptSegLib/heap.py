"""Reuse freed memory during a long torch run instead of asking the kernel for fresh pages each time (glibc).

glibc's ``malloc`` serves every block above 32 MB with its own ``mmap`` and gives it back with ``munmap`` when
freed. A network's activations on a 96^3 window are 56-113 MB each, so every layer of every window gets fresh
pages, which the kernel must fault in and zero: 1.7 GB a window for the default architecture. Measured on 8
windows of 96^3 of the default architecture (2 threads, ``Testing/benchmarks/bench_cpu_parts.py``): 14.8 s,
11.5 s of them in the kernel; 8.3 s and 0.3 s with these settings. Transparent huge pages (a one-off trial) did
not help. On a 512x512x300 CT, one target:
98.7 s before, 48.0 s after (``Testing/benchmarks/bench_targets.py``).

:func:`reused_memory` keeps the heap's free memory for the run; :func:`from_heap`, inside it, serves even the
largest blocks from the heap. Long-lived blocks (the sums of the windows) are allocated outside
:func:`from_heap`, by ``mmap`` as usual, so that each window finds the same free heap and the resident memory stops
growing after the second window. The caller runs its first unit outside :func:`from_heap`
(``Segmenter._window_predictor``): what that unit leaves allocated for the rest of the run (0.11 GB after the
first 96^3 window) then lies outside the free block the later units reuse; otherwise the heap grew around it and
the peak varied by 0.25 GB from run to run. Giving every block of 1 MB or more made outside :func:`from_heap`
pages of its own (mmap threshold 1 MB) was tried: 75 % more page faults (4 windows, 10 targets) and mapping back
twice as slow after the windows. Leaving puts glibc's defaults back and returns the free memory to the
system (``malloc_trim``). Elsewhere than on glibc both do nothing. One lasting effect: once the trim threshold
has been set, glibc no longer moves its mmap threshold by itself for the rest of the process (it stays where it
was).
"""
from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager
from typing import ContextManager, Iterator

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
"""glibc's defaults (malloc/malloc.c: DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX)."""
_KEEP = 2**31 - 1
"""The trim threshold during a run: the heap's free top is kept (2 GB is the largest value ``mallopt`` takes)."""
_lock = threading.Lock()
_users = {_M_TRIM_THRESHOLD: 0, _M_MMAP_MAX: 0}


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else ``None``."""
    try:
        libc = ctypes.CDLL(None)  # the running process's own symbols (Windows: a TypeError)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError, TypeError):
        return None


_LIBC = _glibc()


@contextmanager
def _setting(option: int, value: int, release: bool = False) -> Iterator[None]:
    """glibc's ``option`` at ``value`` while any thread is inside; its default again when the last one leaves
    (then, with ``release``, the free memory goes back to the system)."""
    if _LIBC is None:
        yield
        return
    with _lock:
        _users[option] += 1
        if _users[option] == 1:
            _LIBC.mallopt(ctypes.c_int(option), ctypes.c_int(value))
    try:
        yield
    finally:
        with _lock:
            _users[option] -= 1
            if _users[option] == 0:
                _LIBC.mallopt(ctypes.c_int(option), ctypes.c_int(_DEFAULTS[option]))
                if release:
                    _LIBC.malloc_trim(ctypes.c_size_t(0))


def reused_memory() -> ContextManager[None]:
    """Within: memory freed to the heap stays in the process for the next allocation. On leaving (the last
    thread to leave): glibc's default again, and the free memory goes back to the system."""
    return _setting(_M_TRIM_THRESHOLD, _KEEP, release=True)


def from_heap() -> ContextManager[None]:
    """Within, and inside :func:`reused_memory`: even the largest blocks come from the heap, not from fresh
    ``mmap`` pages. Put the short-lived work of one unit (a window's network pass) here, and allocate what
    lives across units outside, so that every unit finds the same free heap and leaves it as it found it."""
    return _setting(_M_MMAP_MAX, 0)
