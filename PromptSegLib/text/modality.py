"""Imaging modalities by one name each: CT, MR, PET."""
from __future__ import annotations

from PromptSegLib.errors import InputImageError

MODALITIES: tuple[str, ...] = ("CT", "MR", "PET")


def canonical_modality(modality: str) -> str:
    """``"ct"``, ``"MRI"``, ``"pt"``... -> one of ``MODALITIES``.

    Raises:
        InputImageError: an unknown modality.
    """
    key = modality.strip().upper()
    aliases = {"CT": "CT", "MR": "MR", "MRI": "MR", "PET": "PET", "PT": "PET"}
    if key not in aliases:
        raise InputImageError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    return aliases[key]
