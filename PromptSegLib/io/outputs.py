"""Atomic output files: everything PromptSegLib writes appears complete or not at all.

One file: :func:`atomic_path`. Several files that belong together (a segmentation, its labels, overlay and
DICOM objects): :func:`all_or_nothing`, inside which every :func:`atomic_path` keeps its finished temporary
file until the block ends, then all move into place together.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Iterator

from PromptSegLib.errors import OutputError

_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".seg.nii.gz", ".labels.json")
# (finished temporary file, final path) of each atomic_path inside the innermost all_or_nothing block
_STAGED: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("staged", default=None)


def full_suffix(path: str | os.PathLike) -> str:
    """The extension that selects a file format, double ones included (``.nii.gz``, ``.seg.nrrd``)."""
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return name[-len(suffix):]
    return Path(path).suffix.lower()


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when ``path`` cannot be created.

    Raises:
        OutputError: the parent folder is missing or not writable, or ``path`` is a folder.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output path {path} is a folder, expected a file name")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same extension; move it into place on success (inside
    :func:`all_or_nothing`: when that block ends).

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    final = check_writable(path)
    suffix = full_suffix(final)
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    tmp = final.with_name(f".{stem}.partial-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written for {final}")
        staged = _STAGED.get()
        if staged is None:
            os.replace(tmp, final)
        else:
            staged.append((tmp, final))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Every file written with :func:`atomic_path` inside the block appears when the block ends, all of them
    together; after an exception (an error, Ctrl-C, SIGTERM raised as one) none does and none is left.

    The final moves run with SIGINT and SIGTERM held (in the main thread): an interrupt arriving then waits for
    them and is dropped, since the command completed.
    """
    staged: list[tuple[Path, Path]] = []
    token = _STAGED.set(staged)
    try:
        yield
        with _signals_held():
            _move_into_place(staged)
    except BaseException:
        with _signals_held():
            _discard(staged)
        raise
    finally:
        _STAGED.reset(token)


def _move_into_place(staged: list[tuple[Path, Path]]) -> None:
    """Rename each finished temporary file to its final name."""
    for tmp, final in staged:
        os.replace(tmp, final)


def _discard(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM during the block. Python runs signal handlers in the main thread only, with the
    handler set when it runs them (whichever thread the signal reached), so in the main thread a handler that
    does nothing holds both; elsewhere, or where a handler was not set from Python, they are left alone."""
    numbers = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or None in map(signal.getsignal, numbers):
        yield
        return
    previous = {number: signal.signal(number, _drop) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _drop(signum: int, frame) -> None:
    """A signal handler that does nothing."""
