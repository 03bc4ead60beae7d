"""Checks of written DICOM objects: re-read and rebuild the masks (Dice per segment), and ``dciodvfy``
(Debian package ``dicom3tools``) for conformance to the IOD, when it is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from PromptSegLib.dicom.rtstruct import dice


@dataclass
class DciodvfyResult:
    errors: list[str]
    warnings: list[str]
    output: str = field(repr=False, default="")


def dciodvfy_path() -> str | None:
    """Where ``dciodvfy`` is, or ``None`` (install with ``apt-get install -y dicom3tools``)."""
    return shutil.which("dciodvfy")


def run_dciodvfy(path: str | os.PathLike, timeout: float = 120) -> DciodvfyResult:
    """Run ``dciodvfy`` on a file and split its report into error and warning lines.

    Raises:
        FileNotFoundError: ``dciodvfy`` is not installed.
    """
    program = dciodvfy_path()
    if program is None:
        raise FileNotFoundError("dciodvfy not found; install it with: apt-get install -y dicom3tools")
    done = subprocess.run([program, str(Path(path))], capture_output=True, text=True, errors="replace",
                          timeout=timeout)
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    return DciodvfyResult(errors, [line for line in lines if line.startswith("Warning")], "\n".join(lines))


def compare_masks(rebuilt: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice per expected segment name against the rebuilt masks (0 for a segment missing from them)."""
    return {name: dice(rebuilt[name] > 0.5 if name in rebuilt else np.zeros_like(mask, bool), mask)
            for name, mask in expected.items()}


def validate_rtstruct(path, image, references, expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice per ROI of an RTSTRUCT re-read with pydicom and even-odd filled on the series grid."""
    from PromptSegLib.dicom.rtstruct import read_rtstruct

    return compare_masks(read_rtstruct(path, image, references), expected)


def validate_dicom_seg(path, references, expected: dict[str, np.ndarray]) -> dict[str, bool]:
    """Whether each segment of a SEG, re-read with highdicom, equals the expected mask exactly."""
    from PromptSegLib.dicom.seg import read_dicom_seg

    rebuilt = read_dicom_seg(path, references)
    return {name: name in rebuilt and np.array_equal(rebuilt[name] > 0.5, mask) for name, mask in expected.items()}
