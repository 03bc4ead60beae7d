"""The torch device a model runs or trains on, and the CPU thread count (no image I/O: the training on a pack,
on a GPU machine without SimpleITK, uses them too)."""
from __future__ import annotations

import torch

from PromptSegLib.errors import InputImageError, PromptSegError


def parse_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; else ``cpu``, ``cuda`` or ``cuda:N``, which this machine must have.

    Raises:
        PromptSegError: any other name, or a CUDA device that is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise PromptSegError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputImageError("CUDA was asked for but no CUDA device is available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PromptSegError(f"there is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_threads(threads: int | None) -> None:
    """Refuse a CPU thread count below 1 (``None``: torch's default)."""
    if threads is not None and threads < 1:
        raise PromptSegError(f"threads must be 1 or more, got {threads}")


def select_device(name: str = "auto", threads: int | None = None) -> torch.device:
    """:func:`parse_device`; ``threads`` sets the CPU thread count."""
    check_threads(threads)
    if threads:
        torch.set_num_threads(int(threads))
    return parse_device(name)
