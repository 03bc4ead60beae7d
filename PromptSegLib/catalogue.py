"""The model catalogue: one JSON list of the models PromptSeg knows, bundled or to be imported.

Each entry: name, version, url (``null`` for bundled models), sha256 of the weights file, size in bytes,
modalities, targets, regions, spacing, and ``folder`` (the bundled folder's name under
``PromptSegLib/models``). The Slicer module's model manager reads the same file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .model_io import BUNDLED_MODELS, WEIGHTS, read_config, sha256
from .outputs import atomic_path

CATALOGUE = BUNDLED_MODELS / "catalogue.json"


def catalogue_entry(folder: str | os.PathLike, url: str | None = None) -> dict:
    """The catalogue entry of a (verified) model folder."""
    folder = Path(folder)
    config = read_config(folder)
    return {"name": config.name, "version": config.version, "url": url, "sha256": sha256(folder / WEIGHTS),
            "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "modalities": list(config.network.modalities), "targets": config.targets, "regions": config.regions,
            "spacing_mm": config.spacing_mm, "folder": folder.name if folder.parent == BUNDLED_MODELS else None}


def load_catalogue(path: str | os.PathLike = CATALOGUE) -> list[dict]:
    """Entries of a catalogue file (empty when there is none)."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def write_catalogue(entries: list[dict], path: str | os.PathLike = CATALOGUE) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return Path(path)
