"""The model catalogue: one JSON list of the models PromptSeg knows, bundled or to be imported.

Each entry: name, version, kind (``segmentation``, ``propagation`` or ``prognosis``: every kind of model folder is
listed), url (``null`` for bundled models; else where a ``.zip`` of the model folder is downloaded from), sha256
of the weights file (a prognosis model's head), size in bytes, modalities, targets, regions, spacing, and
``folder`` (the bundled folder's name under ``PromptSegLib/models``). A site may list its own downloadable
models in ``$PROMPTSEG_HOME/catalogue.json`` (same format). The Slicer module's model manager reads the same
files. Nothing is downloaded unless the user asks for that model.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

from PromptSegLib.io.outputs import atomic_path
from PromptSegLib.models.folder import BUNDLED_MODELS, KINDS, folder_identity, read_config, sha256

CATALOGUE = BUNDLED_MODELS / "catalogue.json"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_model_name(name: object) -> str:
    """``name`` if it can name a folder in the model cache: letters, digits, ``. _ + -``, at most 100 characters,
    starting with a letter or digit, no ``..`` (so no path separator, no parent folder, no hidden file).

    Raises:
        ModelError: any other name (it comes from a model's own ``config.json`` or a catalogue: untrusted).
    """
    from PromptSegLib.errors import ModelError

    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or ".." in name:
        raise ModelError(f"model name {name!r} is not a plain name (letters, digits, '.', '_', '+', '-'; no path "
                         "separators or '..'); refused to install it")
    return name


def catalogue_entry(folder: str | os.PathLike, url: str | None = None) -> dict:
    """The catalogue entry of a (verified) model folder of any kind: segmentation models list their
    modalities, targets, regions and spacing; a prognosis model its modality and region; a propagation model,
    which works on any image, none of them."""
    folder = Path(folder)
    identity = folder_identity(folder)
    entry = {"name": identity.name, "version": identity.version, "kind": identity.kind, "url": url,
             "sha256": sha256(folder / identity.weights),
             "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
             "modalities": [], "targets": [], "regions": {}, "spacing_mm": None,
             "folder": folder.name if folder.parent == BUNDLED_MODELS else None}
    if identity.kind == "segmentation":
        config = read_config(folder)
        entry.update(modalities=list(config.network.modalities), targets=config.targets, regions=config.regions,
                     spacing_mm=config.spacing_mm)
    elif identity.kind == "prognosis":
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        entry.update(modalities=[raw["modality"]], regions={raw["modality"]: [raw["region"]]})
    return entry


def load_catalogue(path: str | os.PathLike | None = None) -> list[dict]:
    """Entries of a catalogue file: a site's own (``path``; empty when there is none) or, by default, the
    bundled one.

    Raises:
        ModelError: the bundled catalogue is missing (a broken install would otherwise list no model).
    """
    from PromptSegLib.errors import ModelError

    if path is None:
        if not CATALOGUE.is_file():
            raise ModelError(f"the bundled model catalogue {CATALOGUE} is missing: reinstall PromptSeg")
        path = CATALOGUE
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def write_catalogue(entries: list[dict], path: str | os.PathLike = CATALOGUE) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def refresh_bundled_catalogue() -> Path:
    """Rewrite the catalogue from the bundled model folders (after a bundled folder changed, e.g. its card)."""
    folders = sorted(p for p in BUNDLED_MODELS.iterdir() if (p / "config.json").is_file()
                     and json.loads((p / "config.json").read_text()).get("format") in KINDS)
    return write_catalogue([catalogue_entry(f) for f in folders])


def user_models_folder() -> Path:
    """Per-user model cache that survives upgrades: ``$PROMPTSEG_HOME/models`` (default ``~/.promptseg/models``)."""
    return Path(os.environ.get("PROMPTSEG_HOME", Path.home() / ".promptseg")) / "models"


def installed_models() -> dict[str, Path]:
    """Name -> folder of each model installed in the per-user cache (imported or downloaded), by name."""
    return {p.parent.name: p.parent for p in sorted(user_models_folder().glob("*/config.json"))}


def catalogue_entries() -> list[dict]:
    """The bundled catalogue, then the site's (``$PROMPTSEG_HOME/catalogue.json``); a name in both is the
    site's entry."""
    entries = {e["name"]: e for e in load_catalogue()}
    entries.update({e["name"]: e for e in load_catalogue(user_models_folder().parent / "catalogue.json")})
    return list(entries.values())


def download_model(name: str, models_folder: str | os.PathLike | None = None,
                   progress: Callable[[int, int | None], None] | None = None, timeout_s: float = 60.0) -> Path:
    """Download the catalogue entry ``name`` from its ``url`` (a ``.zip`` of one model folder) and install it
    like :func:`import_model`, refusing weights whose sha256 differs from the entry's.

    ``progress(bytes_done, bytes_total or None)`` is called per chunk; raising in it (a cancel) stops the
    download. Nothing is installed unless the whole download passes its checks; the partial file is removed.

    Raises:
        ModelError: unknown name, an entry without url (bundled), a failed download (with what to do
            offline), or a download that is not the catalogued model.
    """
    import tempfile
    import urllib.error
    import urllib.request

    from PromptSegLib.errors import ModelError

    entries = {e["name"]: e for e in catalogue_entries()}
    if name not in entries:
        raise ModelError(f"no model named {name!r} in the catalogue; known: {', '.join(entries) or 'none'}")
    entry = entries[name]
    check_model_name(name)
    if not entry.get("url"):
        raise ModelError(f"model {name!r} is bundled with PromptSeg; there is nothing to download")
    target_root = Path(models_folder) if models_folder else user_models_folder()
    target_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_root, prefix=".download-") as work:
        archive = Path(work) / f"{name}.zip"

        def failed(exc: Exception) -> ModelError:
            return ModelError(f"could not download {name} from {entry['url']} ({exc}); without internet, fetch the "
                              "model's .zip elsewhere and install it with: promptseg models --import ZIP")

        try:
            response = urllib.request.urlopen(entry["url"], timeout=timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise failed(exc) from None
        with response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while True:
                try:
                    chunk = response.read(1 << 20)
                except OSError as exc:  # the connection dropped
                    raise failed(exc) from None
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        return import_model(archive, target_root, expected=entry)


def import_model(source: str | os.PathLike, models_folder: str | os.PathLike | None = None,
                 expected: dict | None = None) -> Path:
    """Copy a model folder or ``.zip`` (for hospitals without internet) into the user cache after checking
    its manifest; returns the installed folder. An installed model of the same name is replaced whole.
    ``expected`` (a catalogue entry): the model must have that name and weights sha256.

    Nothing is written outside ``models_folder`` and nothing there is deleted but an older copy of the same
    model (a folder of that name whose ``config.json`` names it), whatever the model's files say.

    Raises:
        ModelError: not a model, failed checksums, a name that is not a plain name (:func:`check_model_name`),
            not the expected model, or a file or foreign folder in the way.
    """
    import shutil
    import tempfile
    import zipfile

    from PromptSegLib.errors import ModelError
    from PromptSegLib.models.folder import verify_folder

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
        identity = folder_identity(folder)
        verify_folder(folder, required=("config.json", identity.weights))
        if identity.kind == "segmentation":
            read_config(folder)  # checks the architecture and settings too
        if expected and (identity.name != expected["name"]
                         or sha256(folder / identity.weights) != expected["sha256"]):
            raise ModelError(f"{source} is not the catalogued model {expected['name']} {expected.get('version', '')}:"
                             " its name or weights sha256 differ from the catalogue entry")
        final = target_root / check_model_name(identity.name)
        _check_replaceable(final, identity.name)
        staged = Path(work) / "staged"
        shutil.copytree(folder, staged)
        if final.exists():
            old = Path(work) / "old"
            final.rename(old)  # removed with the work folder
        staged.rename(final)
    return final


def _check_replaceable(final: Path, name: str) -> None:
    """Refuse to install over ``final`` unless it is absent or an installed copy of the model ``name``.

    Raises:
        ModelError: ``final`` is a link, a file, or a folder that is not a model of that name.
    """
    from PromptSegLib.errors import ModelError

    if not final.exists() and not final.is_symlink():
        return
    try:
        installed = json.loads((final / "config.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        installed = None
    if final.is_symlink() or not final.is_dir() or installed != name:
        raise ModelError(f"{final} exists and is not an installed copy of model {name!r}; it was left as it is "
                         "(move it away to install this model)")


def route_model(modality: str, region: str | None, targets: list[str] | tuple[str, ...]) -> Path:
    """The installed or bundled model to use when none is named: the one trained for every requested target on
    ``modality``, preferring one trained on ``region`` (then the fewest other targets: the most specialised).

    Args:
        modality: ``CT``, ``MR``, ``PET`` (or an alias such as ``MRI``).
        region: a region name or synonym, or None.
        targets: target names or synonyms (may be empty for free-text targets: then the region decides).

    Raises:
        ModelError: no model covers the request; the message says which model knows which of the targets.
        PromptError, InputImageError: an unknown target, region or modality.
    """
    from PromptSegLib.errors import ModelError
    from PromptSegLib.text.modality import canonical_modality
    from PromptSegLib.text.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    modality = canonical_modality(modality)
    region = vocabulary.region(region).name if region else None
    targets = list(dict.fromkeys(vocabulary.target(t).name for t in targets))
    if not targets and not region:
        return resolve_model(None)

    candidates = []
    for entry in catalogue_entries():
        if entry.get("kind", "segmentation") != "segmentation":
            continue
        try:
            folder = resolve_model(entry["name"])
        except ModelError:
            continue  # listed for download, not installed
        config = read_config(folder)
        if modality not in config.network.modalities or config.network.hints:
            continue  # (a model that takes drawn slices serves the fill's organ prior, not a request without them)
        known = set(config.targets)
        covered = sum(t in known for t in targets)
        in_region = region in config.regions.get(modality, [])
        candidates.append(((covered, in_region, -len(known)), folder, config, sorted(known & set(targets))))
    complete = [c for c in candidates if c[0][0] == len(targets) and (targets or c[0][1])]
    if complete:
        return max(complete, key=lambda c: c[0])[1]
    partial = [f"{c[2].name} knows {', '.join(c[3])}" for c in candidates if c[3]]
    raise ModelError(f"no installed model is trained for {', '.join(targets) or 'free-text targets'} on {modality}"
                     f"{' of the ' + region if region else ''}"
                     + (f" ({'; '.join(partial)}): ask those targets separately" if partial else "")
                     + "; name a model with --model to try anyway")


def resolve_model(name_or_folder: str | os.PathLike | None) -> Path:
    """A model folder path, or a catalogue name looked up in the user cache then the bundled models."""
    from PromptSegLib.errors import ModelError
    from PromptSegLib.models.folder import default_model_folder

    if name_or_folder is None:
        return default_model_folder()
    path = Path(name_or_folder)
    if path.is_dir() or os.sep in str(name_or_folder):
        return path
    for folder in (user_models_folder() / path.name, BUNDLED_MODELS / path.name):
        if (folder / "config.json").is_file():
            return folder
    entries = catalogue_entries()
    names = [e["name"] for e in entries]
    hint = ("download it with: promptseg models --download NAME, or "
            if any(e["name"] == path.name and e.get("url") for e in entries) else "")
    raise ModelError(f"no model named {name_or_folder!r} is installed; known: {', '.join(names) or 'none'}; "
                     f"{hint}import one with: promptseg models --import FOLDER_OR_ZIP")
