"""What a request tells its user beside its result (a target left empty, a side no rule keeps), as a Python
warning and, for a caller that shows its own messages (the Slicer module, whose requests run in a worker
thread), collected per thread.

``warnings.catch_warnings`` would collect them too, but it changes the whole process's warning state, so a worker
thread could swallow the main thread's warnings or the reverse; the notes here are kept per thread.
"""
from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

_local = threading.local()


def note(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with ``message`` (``warnings.warn`` of ``category``, attributed to the function that notes it), and add
    it to the notes this thread is collecting (:func:`collecting_notes`), if any."""
    if getattr(_local, "silent", False):
        return
    collected = getattr(_local, "notes", None)
    if collected is not None and message not in collected:
        collected.append(message)
    warnings.warn(message, category, stacklevel=2)


@contextmanager
def collecting_notes() -> Iterator[list[str]]:
    """Within: every :func:`note` of this thread is added, once, to the list yielded."""
    previous = getattr(_local, "notes", None)
    _local.notes = collected = []
    try:
        yield collected
    finally:
        _local.notes = previous


@contextmanager
def silenced() -> Iterator[None]:
    """Within: this thread's :func:`note` calls say nothing (a step the user did not ask for, such as a target
    segmented only to place others)."""
    previous = getattr(_local, "silent", False)
    _local.silent = True
    try:
        yield
    finally:
        _local.silent = previous
