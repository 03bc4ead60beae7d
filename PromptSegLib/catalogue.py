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


def user_models_folder() -> Path:
    """Per-user model cache that survives upgrades: ``$PROMPTSEG_HOME/models`` (default ``~/.promptseg/models``)."""
    return Path(os.environ.get("PROMPTSEG_HOME", Path.home() / ".promptseg")) / "models"


def import_model(source: str | os.PathLike, models_folder: str | os.PathLike | None = None) -> Path:
    """Copy a model folder or ``.zip`` (for hospitals without internet) into the user cache after checking
    its manifest; returns the installed folder. An installed model of the same name is replaced whole."""
    import shutil
    import tempfile
    import zipfile

    from .errors import ModelError
    from .model_io import verify_folder

    source = Path(source)
    target_root = Path(models_folder) if models_folder else user_models_folder()
    target_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_root, prefix=".import-") as work:
        if source.is_file() and zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                archive.extractall(work)
            configs = list(Path(work).rglob("config.json"))
            if len(configs) != 1:
                raise ModelError(f"{source} must hold exactly one model folder (found {len(configs)})")
            folder = configs[0].parent
        elif source.is_dir():
            folder = Path(shutil.copytree(source, Path(work) / source.name))
        else:
            raise ModelError(f"{source} is neither a model folder nor a .zip of one")
        config = read_config(verify_folder(folder))
        final = target_root / config.name
        staged = target_root / f".{config.name}.new"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(folder, staged)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return final


def resolve_model(name_or_folder: str | os.PathLike | None) -> Path:
    """A model folder path, or a catalogue name looked up in the user cache then the bundled models."""
    from .errors import ModelError
    from .model_io import default_model_folder

    if name_or_folder is None:
        return default_model_folder()
    path = Path(name_or_folder)
    if path.is_dir() or os.sep in str(name_or_folder):
        return path
    for folder in (user_models_folder() / path.name, BUNDLED_MODELS / path.name):
        if (folder / "config.json").is_file():
            return folder
    names = [e["name"] for e in load_catalogue()]
    raise ModelError(f"no model named {name_or_folder!r} is installed; known: {', '.join(names) or 'none'}; "
                     "import one with: promptseg models --import FOLDER_OR_ZIP")
