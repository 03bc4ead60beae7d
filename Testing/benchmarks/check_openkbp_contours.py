"""Do the OpenKBP organ contours lie on the anatomy of their CT? Mean HU inside each organ, every patient.

A brain stem, spinal cord or parotid contour drawn on its CT holds soft tissue (about -100 to 100 HU) and a
mandible contour bone. A patient whose contour means there lie far from every other patient's (more than
``--spread`` robust standard deviations from the median, per organ) is listed with those organs: its contours
are likely not registered to its CT, and its Dice says nothing about a model. The esophagus and the larynx
are not checked: they hold the airway, so air in them is no sign of a misplaced contour.

Reads the converted patients in ``../shared/data/openkbp_hn_ct/validation`` (``ct.nii.gz``, ``oars.nii.gz``)
and, with ``--train-pats``, a checkout's ``provided-data/train-pats`` through the project's importer.

Usage: python Testing/benchmarks/check_openkbp_contours.py [--train-pats FOLDER] [--spread 6]
"""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.train import openkbp

CONVERTED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openkbp_hn_ct" / "validation"
ORGANS = ("brain stem", "spinal cord", "right parotid", "left parotid", "esophagus", "larynx", "mandible")
"""Label values 1-7 of ``oars.nii.gz`` and of ``openkbp.read_structures``, in that order."""
CHECKED = np.array([organ not in ("esophagus", "larynx") for organ in ORGANS])
"""Organs without air in them, whose mean HU flags a patient."""


def patients(train_pats: Path | None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, CT in HU, labels)`` per patient, both arrays ``(Z, Y, X)``: the training folder first."""
    if train_pats is not None:
        for folder in openkbp.patients(train_pats):
            yield (f"train/{folder.name}", sitk.GetArrayFromImage(openkbp.read_ct(folder)),
                   sitk.GetArrayFromImage(openkbp.read_structures(folder)))
    for folder in sorted(CONVERTED.glob("pt_*")):
        yield (f"converted/{folder.name}", sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ct.nii.gz"))),
               sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "oars.nii.gz"))))


def contour_means(ct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean HU inside each of the seven organs, shape ``(7,)``; NaN where the organ is not contoured."""
    return np.array([ct[labels == value].mean() if (labels == value).any() else np.nan
                     for value in range(1, len(ORGANS) + 1)])


def outliers(means: np.ndarray, spread: float) -> np.ndarray:
    """``(patients, 7)`` booleans: a mean more than ``spread`` robust SDs (1.4826 MAD) from the organ's median,
    for the ``CHECKED`` organs (False for the others)."""
    median = np.nanmedian(means, axis=0)
    robust_sd = 1.4826 * np.nanmedian(np.abs(means - median), axis=0)
    with np.errstate(invalid="ignore"):
        return (np.abs(means - median) > spread * robust_sd) & CHECKED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pats", type=Path, help="an open-kbp checkout's provided-data/train-pats")
    parser.add_argument("--spread", type=float, default=6.0, help="robust SDs from the median that flag a mean")
    args = parser.parse_args()
    names, rows = [], []
    for name, ct, labels in patients(args.train_pats):
        names.append(name)
        rows.append(contour_means(ct, labels))
    means = np.array(rows)
    flagged = outliers(means, args.spread)
    print(f"{len(names)} patients; mean HU inside each contour, median [min, max]:")
    for index, organ in enumerate(ORGANS):
        column = means[:, index]
        print(f"  {organ}: {np.nanmedian(column):.0f} [{np.nanmin(column):.0f}, {np.nanmax(column):.0f}] "
              f"({np.isfinite(column).sum()} patients)")
    checked = ", ".join(organ for organ, check in zip(ORGANS, CHECKED) if check)
    print(f"patients with a contour ({checked}) more than {args.spread:g} robust SDs from its organ's median:")
    for row in np.flatnonzero(flagged.any(axis=1)):
        parts = [f"{ORGANS[i]} {means[row, i]:.0f} HU" for i in np.flatnonzero(flagged[row])]
        print(f"  {names[row]}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
