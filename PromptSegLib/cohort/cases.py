"""The cases of a cohort: found in a folder tree (one case per image file or DICOM series) or listed in a CSV.

Only names are looked at here; reading happens later, case by case, so an unreadable file becomes a failed
case and not a stopped cohort.
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PromptSegLib.errors import InputImageError, PromptSegError
from PromptSegLib.io.imageio import IMAGE_SUFFIXES, list_dicom_series
from PromptSegLib.io.outputs import full_suffix

NOT_IMAGES = (".seg.nrrd", ".seg.nii.gz")
"""Segmentation files found beside the images are not cases."""


@dataclass(frozen=True)
class Case:
    """One case of a cohort.

    Attributes:
        case_id: unique, usable as a file name (letters, digits, ``.``, ``_``, ``-``).
        image: an image file or a DICOM series folder (absolute path).
        series_uid: which series of the folder, when it holds several.
        reference: a reference segmentation for Dice: a ``.seg.nrrd``, a labelmap (with its ``.labels.json``)
            or a binary mask (absolute path), or None.
    """

    case_id: str
    image: str
    series_uid: str | None = None
    reference: str | None = None

    def input_signature(self) -> str:
        """Changes when the image, its DICOM files or the reference change (sizes and modification times)."""
        parts = [self.image, self.series_uid or "", self.reference or ""]
        for path in (Path(self.image), Path(self.reference) if self.reference else None):
            if path is None:
                continue
            files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files if p.exists()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def safe_id(text: str) -> str:
    """A file-name-safe case id: path separators and other characters become ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace(os.sep, "_").replace("/", "_")).strip("._")
    if not cleaned:
        raise PromptSegError(f"case id {text!r} has no usable character")
    return cleaned


def _unique(cases: list[Case]) -> list[Case]:
    """Cases with their ids made unique (``-2``, ``-3`` ... appended to repeats, skipping ids already taken),
    sorted by id."""
    taken = {c.case_id for c in cases}
    seen: set[str] = set()
    out = []
    for case in sorted(cases, key=lambda c: (c.case_id, c.image, c.series_uid or "")):
        case_id, count = case.case_id, 1
        while case_id in seen or (count > 1 and case_id in taken):
            count += 1
            case_id = f"{case.case_id}-{count}"
        seen.add(case_id)
        out.append(case if case_id == case.case_id else Case(case_id, case.image, case.series_uid, case.reference))
    return sorted(out, key=lambda c: c.case_id)


def find_cases(root: str | os.PathLike, pattern: str | None = None) -> list[Case]:
    """Every NIfTI/NRRD/MHA file and every DICOM series under ``root``, one case each, sorted by id.

    Args:
        root: the top folder.
        pattern: a shell pattern the path relative to ``root`` must match (e.g. ``*/CT_image.nii.gz``);
            DICOM series are matched by their folder's relative path.

    Returns:
        Cases named after their relative path (``STS_001/CT_image.nii.gz`` -> ``STS_001_CT_image``; a folder
        holding several series adds each series' UID).

    Raises:
        PromptSegError: ``root`` is not a folder, or nothing matched.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise PromptSegError(f"cohort folder {root} does not exist")
    cases = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        folder = Path(folder)
        relative_folder = folder.relative_to(root).as_posix()
        for name in sorted(files):
            suffix = full_suffix(name)
            relative = (folder / name).relative_to(root).as_posix()
            if (suffix in IMAGE_SUFFIXES and suffix not in NOT_IMAGES
                    and (pattern is None or fnmatch.fnmatch(relative, pattern))):
                cases.append(Case(safe_id(relative[: -len(suffix)]), str(folder / name)))
        if pattern is not None and not fnmatch.fnmatch(relative_folder, pattern):
            continue
        try:
            series = list_dicom_series(folder) if any(full_suffix(n) not in IMAGE_SUFFIXES for n in files) else []
        except InputImageError:  # a damaged file: the folder is a case that fails with the reason
            series = [None]
        if not series and any(n.lower().endswith(".dcm") for n in files):
            series = [None]  # DICOM files no series can be read from: a case that fails with the reason
        for uid in series:
            name = relative_folder if relative_folder != "." else root.name
            cases.append(Case(safe_id(name if len(series) == 1 else f"{name}_{uid}"), str(folder),
                              uid if len(series) > 1 else None))
    if not cases:
        raise PromptSegError(f"no image file or DICOM series under {root}"
                             + (f" matching {pattern!r}" if pattern else ""))
    return _unique(cases)


def read_case_list(path: str | os.PathLike) -> list[Case]:
    """Cases from a CSV with an ``image`` column and optional ``case_id``, ``series_uid`` and ``reference``
    columns; relative paths are relative to the CSV's folder.

    Raises:
        PromptSegError: unreadable CSV, no ``image`` column, no rows, or repeated case ids.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PromptSegError(f"cannot read case list {path}: {exc}") from exc
    if not rows or "image" not in rows[0]:
        raise PromptSegError(f"case list {path} needs a header with an 'image' column and one row per case")

    def absolute(value: str | None) -> str | None:
        value = (value or "").strip()
        return str((path.parent / value).resolve()) if value else None

    cases = []
    for number, row in enumerate(rows, start=2):
        image = absolute(row.get("image"))
        if image is None:
            raise PromptSegError(f"case list {path}, line {number}: no image")
        given = (row.get("case_id") or "").strip()
        name = given or Path(image).name[: len(Path(image).name) - len(full_suffix(image))]
        cases.append(Case(safe_id(name), image, (row.get("series_uid") or "").strip() or None,
                          absolute(row.get("reference"))))
    ids = [c.case_id for c in cases]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated and any((r.get("case_id") or "").strip() for r in rows):
        raise PromptSegError(f"case list {path} repeats case ids: {', '.join(repeated)}")
    return _unique(cases)


def load_cases(source: str | os.PathLike, pattern: str | None = None) -> list[Case]:
    """A CSV file (:func:`read_case_list`) or a folder tree (:func:`find_cases`)."""
    if Path(source).is_file() and full_suffix(source) == ".csv":
        if pattern:
            raise PromptSegError("--pattern selects files in a folder tree, not rows of a case list")
        return read_case_list(source)
    return find_cases(source, pattern)
