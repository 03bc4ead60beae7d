"""Atomic output files: everything PromptSegLib writes appears complete or not at all."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

from .errors import OutputError

_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".seg.nii.gz", ".labels.json")


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
    """Yield a temporary path beside ``path`` with the same extension; move it into place on success.

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
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
