"""Whole-volume inference: sliding windows (MONAI's positions and Gaussian blending, computed without MONAI), one
backbone pass per window for the context, all requested targets' generated heads applied at once.
"""
from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from PromptSegLib.errors import Cancelled, InputImageError, ModelError, PromptError, PromptSegError
from PromptSegLib.heap import from_heap, reused_memory
from PromptSegLib.io.imageio import validate_volume
from PromptSegLib.models.catalogue import resolve_model
from PromptSegLib.models.device import select_device
from PromptSegLib.models.folder import Model, ModelConfig, load_model
from PromptSegLib.notes import note, silenced
from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.preprocessing.preprocess import (ModelInput, body_areas_cm2, bounding_box,
                                                   enclosed_air_cm2, prepare, to_original_box)
from PromptSegLib.segment.postprocess import AnchorWindow, anchor_window, midline_x, postprocess
from PromptSegLib.segment.probability import FLOOR, ProbabilityMap, level
from PromptSegLib.segment.windows import sliding_windows, window_slices
from PromptSegLib.text.encoder import LoraSettings, TextEncoder
from PromptSegLib.text.modality import canonical_modality
from PromptSegLib.text.prompts import TargetQuery, context_prompt, raw_target_query, target_query
from PromptSegLib.text.vocabulary import Vocabulary, default_vocabulary, other_side, side_of

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], what is happening)."""


class CancelFlag(Protocol):
    """Anything with ``is_set()``, e.g. ``threading.Event``."""

    def is_set(self) -> bool: ...


class UnsidedTargetWarning(UserWarning):
    """A target of one side was asked of a model that keeps no mask to that side (see :func:`model_queries`)."""


def check_request(config: ModelConfig, vocabulary: Vocabulary, modality: str, region: str | None = None,
                  targets: Sequence[str] = (), target_texts: Sequence[str] = (), context_text: str | None = None,
                  allow_untrained: bool = False) -> tuple[str, list[TargetQuery], str]:
    """:meth:`Segmenter.check_request` from a model's config alone (before its weights are loaded)."""
    modality = canonical_modality(modality)
    if modality not in config.network.modalities:
        raise InputImageError(f"model {config.name} has no {modality} input; "
                              f"it takes {', '.join(config.network.modalities)}")
    return (modality, model_queries(config, vocabulary, modality, targets, target_texts, allow_untrained),
            request_context(vocabulary, modality, region, context_text))


def model_queries(config: ModelConfig, vocabulary: Vocabulary, modality: str, targets: Sequence[str] = (),
                  target_texts: Sequence[str] = (), allow_untrained: bool = False) -> list[TargetQuery]:
    """Target names (vocabulary) and raw T2 texts as queries; targets the model never learnt are refused.

    A target of one side (the left kidney) whose other side the model also learnt, and which the model's
    post-processing does not keep on its own side of the body (``ModelConfig.own_side``), is named in an
    :class:`UnsidedTargetWarning`: the networks here were seen to give the same mask for both sides (the starter's
    left and right kidney masks overlap at Dice 0.93 on its training CT, ``Testing/benchmarks/check_laterality.py``)."""
    modality = canonical_modality(modality)
    out = [target_query(modality, t, vocabulary) for t in targets]
    out += [raw_target_query(t, vocabulary) for t in target_texts]
    if not out:
        raise PromptError("no target given: name at least one")
    trained = set(config.targets)
    untrained = [q.name for q in out if q.target is not None and q.name not in trained]
    if untrained and not allow_untrained:
        raise PromptError(f"model {config.name} was not trained for: {', '.join(untrained)} (it knows: "
                          f"{', '.join(sorted(trained))}); allow untrained targets (--allow-untrained) to try anyway")
    unsided = [q.name for q in out if side_of(q.target) and q.name not in config.own_side
               and other_side(q.name) in trained]
    if unsided:
        note(f"model {config.name} keeps no mask to its own side of the body for: {', '.join(unsided)} "
             "(no validation patient chose that rule for it), and its network may give the same mask for the left "
             "and the right structure: check the side", UnsidedTargetWarning)
    return out


def request_context(vocabulary: Vocabulary, modality: str, region: str | None = None,
                    context_text: str | None = None) -> str:
    """T1 from (modality, region) through the vocabulary, or ``context_text`` as is."""
    if context_text:
        return context_text.strip()
    if not region:
        raise PromptError("give a body region or a context text")
    return context_prompt(modality, vocabulary.region(region).name)


PRECISIONS = ("auto", "float32", "bfloat16")
"""Arithmetic of the network: ``auto`` is float32 on the CPU and half precision on CUDA (bfloat16 where the GPU
has it, else float16); ``bfloat16`` on a CPU with native bfloat16 (AVX512-BF16 or AMX) is about twice as fast as
float32, its masks a voxel or so apart at the edges. Measured by ``Testing/benchmarks/bench_precision.py`` (the
head-and-neck model, its 12 validation patients, 2 threads): mean Dice 0.694 in both, masks agreeing with
float32's at Dice 0.998 on average (0.992 at the lowest), 1.86x faster. Not the CPU default: float32 repeats
exactly. On a CPU without AVX512 or AMX, ``bfloat16`` runs float32 (:func:`check_precision`)."""


def check_precision(precision: str, device: torch.device | None = None) -> str:
    """Refuse an unknown precision; return the precision to run. bfloat16 asked of a CPU ``device`` that oneDNN
    has no bfloat16 kernels for (it needs AVX512 or AMX) runs in float32, with a warning: there every convolution
    falls back to oneDNN's reference code (the bundled starter on a 64x64x128 crop of a CT ran over 15 minutes
    without finishing on a 2-core AVX2 CPU, against seconds in float32). Without a device (a request checked
    before its model is loaded) only the name is checked."""
    if precision not in PRECISIONS:
        raise PromptSegError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if (precision == "bfloat16" and device is not None and device.type == "cpu"
            and not torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        warnings.warn("this CPU has no bfloat16 kernels (they need AVX512 or AMX): running float32 instead, as "
                      "emulated bfloat16 would take many times longer", stacklevel=3)
        return "float32"
    return precision


HEAD_ELEMENTS = 1 << 21
"""Hidden-map elements (windows x targets x head channels x voxels, float32: 8 MB) the generated heads run on at
once, a slab of the window at a time. On a whole 96^3 window 20 targets' maps would take 566 MB; a budget in
elements rather than voxels keeps them in the cache however many targets there are. A one-off timing of the heads
on one 96^3 window of the default architecture (2 threads, three runs each): 20 targets 0.50-0.71 s in slabs of
65536 voxels, 0.21-0.42 s with this budget; 10 targets 0.15-0.22 s and 0.08-0.12 s. ``bench_targets.py``
measures the whole request."""


def window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows :func:`~.windows.sliding_windows` visits for a volume of ``shape`` (padded to ``roi``)."""
    return len(window_slices([max(s, r) for s, r in zip(shape, roi)], roi, overlap))


class SegmentationResult:
    """Per-target probabilities on the input image's own grid, one compact map per target (see
    :mod:`.probability`): full-size arrays are made on demand, one target at a time.

    Attributes:
        queries: the targets, in the order of ``maps``.
        context: the T1 text used.
        maps: one :class:`~.probability.ProbabilityMap` per target, indexed like
            ``sitk.GetArrayFromImage(reference)``.
        reference: the input image (geometry of the result).
        threshold: probability at or above which a voxel is in a target.
    """

    def __init__(self, queries: Sequence[TargetQuery], context: str,
                 probabilities: np.ndarray | Iterable[np.ndarray | ProbabilityMap], reference: sitk.Image,
                 threshold: float):
        """``probabilities``: float ``(T, Z, Y, X)`` in [0, 1], or per target a float ``(Z, Y, X)`` array or a
        ``ProbabilityMap`` (an iterator is taken one target at a time: one full-size array at once)."""
        self.queries = list(queries)
        self.context = context
        self.maps = [p if isinstance(p, ProbabilityMap) else ProbabilityMap.from_array(p) for p in probabilities]
        self.reference = reference
        self.threshold = threshold

    def probability(self, index: int) -> np.ndarray:
        """float32 ``(Z, Y, X)`` probabilities of target ``index`` in [0, 1]."""
        return self.maps[index].dense()

    @property
    def probabilities(self) -> np.ndarray:
        """float32 ``(T, Z, Y, X)``: every target's full-size map at once (T x 4 bytes a voxel); prefer
        :meth:`probability` or :meth:`mask` one target at a time."""
        return np.stack([m.dense() for m in self.maps])

    def mask(self, index: int, threshold: float | None = None) -> np.ndarray:
        """Binary mask ``(Z, Y, X)`` of target ``index`` at ``threshold`` (default: the result's)."""
        return self.maps[index].at_least(self.threshold if threshold is None else threshold)

    def paste(self, index: int, box: tuple[slice, slice, slice], probabilities: np.ndarray) -> None:
        """Replace target ``index``'s probabilities inside ``box`` (index slices ``(z, y, x)``)."""
        dense = self.maps[index].dense()
        dense[box] = probabilities
        self.maps[index] = ProbabilityMap.from_array(dense)


class Segmenter:
    """Runs a PromptSeg model on images with text prompts.

    Args:
        model: a loaded ``Model``, a model folder, or an installed model's name (default: the bundled starter).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads for torch (``None``: torch's default).
        text_encoder: override the model's encoder (a loaded one, or a folder giving the same embedding size).
        vocabulary: target names and synonyms (default: the shipped vocabulary).
        precision: the network's arithmetic, one of :data:`PRECISIONS`.
    """

    def __init__(self, model: Model | str | os.PathLike | None = None, device: str = "auto",
                 threads: int | None = None, text_encoder: str | TextEncoder | None = None,
                 vocabulary: Vocabulary | None = None, precision: str = "auto"):
        self.model = model if isinstance(model, Model) else load_model(resolve_model(model))
        self.device = select_device(device, threads)
        self.precision = check_precision(precision, self.device)
        self.network = self.model.network.to(self.device).eval()
        self.encoder = (text_encoder if isinstance(text_encoder, TextEncoder)
                        else self._model_encoder(text_encoder))
        if self.encoder.dim != self.model.config.network.text_dim:
            raise PromptError(f"text encoder {self.encoder.encoder_id} gives {self.encoder.dim}-d embeddings; "
                              f"the model expects {self.model.config.network.text_dim}")
        self.vocabulary = vocabulary or default_vocabulary()

    def _model_encoder(self, override: str | None) -> TextEncoder:
        """The model's text encoder, with its LoRA adapters when it was tuned with them (then no override)."""
        config = self.model.config
        if not config.text_lora:
            return TextEncoder(override or config.text_encoder)
        if override and str(override) != config.text_encoder:
            raise PromptError(f"model {config.name} tuned its text encoder {config.text_encoder} with LoRA: "
                              "it cannot use another encoder")
        if not self.model.text_lora_state:
            raise ModelError(f"model {config.name} names LoRA settings but carries no LoRA weights")
        return TextEncoder(config.text_encoder, lora=LoraSettings.from_dict(config.text_lora),
                           lora_state=self.model.text_lora_state)

    def queries(self, modality: str, targets: Sequence[str] = (), target_texts: Sequence[str] = (),
                allow_untrained: bool = False) -> list[TargetQuery]:
        """Resolve target names (vocabulary) and raw T2 texts; refuse targets the model never learnt."""
        return model_queries(self.model.config, self.vocabulary, modality, targets, target_texts, allow_untrained)

    def context(self, modality: str, region: str | None = None, context_text: str | None = None) -> str:
        """T1 from (modality, region) through the vocabulary, or ``context_text`` as is."""
        return request_context(self.vocabulary, modality, region, context_text)

    def intensity_rule(self, modality: str) -> IntensityRule | None:
        """The model's fixed intensity rule for ``modality`` (CT), or None to use each image's own statistics."""
        return self.model.config.intensity_rule(modality)

    def check_request(self, modality: str, region: str | None = None, targets: Sequence[str] = (),
                      target_texts: Sequence[str] = (), context_text: str | None = None,
                      allow_untrained: bool = False) -> tuple[str, list[TargetQuery], str]:
        """Check a request before any work: (canonical modality, target queries, T1 text).

        Raises:
            InputImageError: the model has no input block for the modality.
            PromptError: unknown or untrained target, unknown region, no target.
        """
        return check_request(self.model.config, self.vocabulary, modality, region, targets, target_texts,
                             context_text, allow_untrained)

    def segment(self, image: sitk.Image, modality: str, region: str | None = None,
                targets: Sequence[str] = (), *, target_texts: Sequence[str] = (), context_text: str | None = None,
                allow_untrained: bool = False, overlap: float | None = None, sw_batch_size: int = 1,
                spacing_mm: float | None = None, intensity: IntensityRule | None = None,
                postprocessing: bool = True, progress: ProgressCallback | None = None,
                cancel: CancelFlag | None = None,
                hint: np.ndarray | None = None) -> SegmentationResult:
        """Segment every requested target in ``image``.

        Args:
            image: a 3D scalar image (CT in HU, MR, PET in SUV), any orientation and spacing.
            modality: CT, MR or PET; the model must have an input block for it.
            region: body region for the context prompt (vocabulary name or synonym).
            targets: vocabulary target names or synonyms.
            target_texts: raw T2 sentences.
            context_text: a raw T1 sentence instead of ``region``.
            allow_untrained: accept vocabulary targets the model was not trained on.
            overlap: sliding-window overlap fraction; default the model's (``ModelConfig.overlap``).
            sw_batch_size: windows per network call. One takes the least memory, and with the network's
                ``cpu_routes`` two are no faster on the CPU (2 threads: ``promptseg-hn-oars``, 7 organs on an
                OpenKBP CT, 11.7-11.8 s with two, 11.7-12.1 s with one; the default architecture's 48^3 windows
                0.27 s for two in one call, 0.22-0.24 s one at a time). Before the routes PyTorch sent a lone
                small window to its slow reference convolutions, and two per call were the default there.
            spacing_mm: work at this spacing instead of the model's (closer look).
            intensity: intensity rule to use instead of one fitted on ``image`` (for crops).
            postprocessing: the model's post-processing (largest component, own side, region checks, anchors: an
                anchor not asked for is segmented too, and says nothing of itself); off: the network's
                probabilities as they are (for a crop, whose midline, body and anchors are not the patient's).
            progress: called as windows complete.
            cancel: checked before each window; when set, ``Cancelled`` is raised.
            hint: for a model whose network takes drawn slices (``NetworkConfig.hints``), their ``(2, Z, Y, X)``
                float32 channels (``network.HINT_CHANNELS``) on the model grid (``preprocess.model_grid(image,
                spacing)``, the spacing the segmentation works at).

        Returns:
            probabilities on ``image``'s grid, one channel per target.
        """
        report = progress or (lambda fraction, message: None)
        validate_volume(image)
        modality, queries, context = self.check_request(modality, region, targets, target_texts, context_text,
                                                        allow_untrained)
        report(0.0, "preparing the volume")
        prepared = prepare(image, modality, spacing_mm or self.model.config.spacing_mm,
                           intensity or self.intensity_rule(modality))
        config = self.model.config
        anchored = {q.name: config.anchored[q.name] for q in queries if postprocessing and q.name in config.anchored}
        anchors = list(dict.fromkeys(anchor for anchor, _, _ in anchored.values()))
        # an anchor not asked for is segmented too (one more head on the same windows), for its place only
        missing = [a for a in anchors if a not in {q.name for q in queries}]
        asked = list(queries) + (self.queries(modality, missing) if missing else [])
        channels, box = self.predict_in_box(prepared, modality, context, asked, overlap, sw_batch_size,
                                            report, cancel, half=True, hint=hint)
        report(0.95, "mapping back to the input grid")
        sides = {q.name: side_of(q.target) for q in queries
                 if postprocessing and q.name in config.own_side and side_of(q.target)}
        midline = midline_x(image) if sides else None
        body_cm2 = body_areas_cm2(image) if postprocessing and modality == "CT" and config.widest_body_cm2 else None
        air_cm2 = enclosed_air_cm2(image) if postprocessing and modality == "CT" and config.most_air_cm2 else None
        shape = sitk.GetArrayViewFromImage(image).shape
        maps: list[ProbabilityMap | None] = [None] * len(queries)
        windows: dict[str, AnchorWindow] = {}
        for index in sorted(range(len(asked)), key=lambda i: asked[i].name not in anchors):  # anchors first
            query = asked[index]
            channel, channels[index] = channels[index], None  # its memory goes once mapped back
            values, box_on_input = self._to_input_grid(channel, box, prepared)
            del channel
            origin = tuple(s.start for s in box_on_input)
            if postprocessing:
                with nullcontext() if index < len(queries) else silenced():  # an anchor nobody asked for
                    postprocess(values[None], [query.name], level(config.threshold),
                                float(np.prod(image.GetSpacing())) / 1000.0, config.largest_component,
                                config.plausible_ml, sides, image, config.widest_body_cm2, body_cm2,
                                origin, midline, config.most_air_cm2, air_cm2, windows)
            for target, (anchor, below, above) in anchored.items():
                if anchor == query.name:
                    windows[target] = anchor_window(values >= level(config.threshold), image, anchor, below, above,
                                                    origin)
            if index < len(queries):
                maps[index] = ProbabilityMap(shape, box_on_input, values)
        report(1.0, "done")
        return SegmentationResult(queries, context, maps, image, config.threshold)

    @staticmethod
    def _to_input_grid(channel: torch.Tensor, box: tuple[slice, slice, slice],
                       prepared: ModelInput) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
        """One target's model-grid probabilities ``channel`` (float16 or float32, on ``box`` of the model grid) on
        the input grid in 1/255 steps (uint8), only inside the input box they reach with
        :data:`~.probability.FLOOR` or more, and that box. The same as mapping the whole model grid back and
        rounding, at the cost of the target's box. (In torch: NumPy compares and converts float16 about eight
        times slower, 0.3 s a target on a 512x512x300 CT.)"""
        support = bounding_box((channel >= FLOOR).numpy())
        if support is None:
            return np.zeros((0, 0, 0), np.uint8), (slice(0, 0),) * 3
        # one voxel more on each side (zeros beyond the windows' box), so interpolation sees what the whole
        # model grid holds there
        low = [max(b.start + s.start - 1, 0) for b, s in zip(box, support)]
        high = [min(b.start + s.stop + 1, n) for b, s, n in zip(box, support, prepared.array.shape)]
        block = torch.zeros([h - lo for lo, h in zip(low, high)], dtype=torch.float32)
        inner = tuple(slice(max(lo, b.start), min(h, b.stop)) for lo, h, b in zip(low, high, box))
        block[tuple(slice(i.start - lo, i.stop - lo) for i, lo in zip(inner, low))] = \
            channel[tuple(slice(i.start - b.start, i.stop - b.start) for i, b in zip(inner, box))]
        # interpolated (255 p + 0.5), truncated to uint8 by the resampler: 255 p rounded, with no float copy
        block.clamp_(0.0, 1.0).mul_(255.0).add_(0.5)
        return to_original_box(block.numpy(), tuple(low), prepared, sitk.sitkUInt8)

    def predict_on_model_grid(self, prepared: ModelInput, modality: str, context: str, queries: Sequence[TargetQuery],
                              overlap: float | None = None, sw_batch_size: int = 1,
                              progress: ProgressCallback | None = None,
                              cancel: CancelFlag | None = None) -> torch.Tensor:
        """Probabilities ``(T, Z, Y, X)`` float32 on the whole model grid of an already prepared volume (see
        :meth:`predict_in_box`); probabilities outside ``prepared.body`` are 0.

        Raises:
            Cancelled: ``cancel`` was set.
        """
        channels, box = self.predict_in_box(prepared, modality, context, queries, overlap, sw_batch_size,
                                            progress, cancel)
        whole = torch.zeros((len(queries), *prepared.array.shape), dtype=torch.float32)
        for target, channel in zip(whole, channels):
            target[box] = channel
        return whole

    def predict_in_box(self, prepared: ModelInput, modality: str, context: str, queries: Sequence[TargetQuery],
                       overlap: float | None = None, sw_batch_size: int = 1,
                       progress: ProgressCallback | None = None, cancel: CancelFlag | None = None,
                       half: bool = False,
                       hint: np.ndarray | None = None) -> tuple[list[torch.Tensor], tuple[slice, slice, slice]]:
        """Per query, probabilities ``(z, y, x)`` float32 on the model grid of an already prepared volume, only
        inside the box the windows cover (sliding windows: one backbone pass per window serves every query), and
        that box (index slices of ``prepared.array``): ``prepared.body`` when set (CT: the body and its margin,
        the air around it is background), else the whole array. Each query's map is a tensor of its own
        (:func:`~.windows.sliding_windows`), so a caller can free them one at a time. With ``half`` they are
        float16, summed in float16 (half the memory; a probability moves by about 0.003 at most). ``overlap``:
        the windows' overlap fraction, default the model's (``ModelConfig.overlap``). ``hint``: drawn slices
        ``(2, *prepared.array.shape)`` for a network that takes them (see :meth:`segment`).

        Raises:
            Cancelled: ``cancel`` was set.
        """
        report = progress or (lambda fraction, message: None)
        overlap = self.model.config.overlap if overlap is None else overlap
        embeddings = self.encoder.encode([context] + [q.prompt for q in queries]).to(self.device)
        box = prepared.body or tuple(slice(0, n) for n in prepared.array.shape)
        array = prepared.array[box]
        if hint is not None and hint.shape != (2, *prepared.array.shape):
            raise ValueError(f"a hint must be shaped (2, *{prepared.array.shape}), not {hint.shape}")
        extra = None if hint is None else torch.from_numpy(np.ascontiguousarray(hint[(slice(None), *box)],
                                                                                 dtype=np.float32))
        padding = self.model.config.padding  # as the training crops were padded
        with torch.inference_mode(), self._autocast(), reused_memory():
            predict = self._window_predictor(modality, embeddings[0], embeddings[1:], array.shape, overlap, report,
                                             cancel)
            maps = sliding_windows(torch.from_numpy(array), self.model.config.patch_size,
                                   overlap, predict, len(queries), sw_batch_size,
                                   padding, float(prepared.array.min()), torch.float16 if half else torch.float32,
                                   self.device, extra)
        if cancel is not None and cancel.is_set():
            raise Cancelled("segmentation cancelled")
        return maps, box

    def _window_predictor(self, modality: str, context: torch.Tensor, targets: torch.Tensor, shape: Sequence[int],
                          overlap: float, report: ProgressCallback, cancel: CancelFlag | None):
        """The sliding-window predictor: probabilities ``(B, T, z, y, x)`` float32 for a batch of windows, in one
        tensor that each call fills again (allocated once: a fresh T x 3.5 MB block per window fragments the
        heap that :func:`~PromptSegLib.heap.reused_memory` keeps).

        Later windows take their blocks from the heap (:func:`~PromptSegLib.heap.from_heap`), the first does not:
        what it leaves allocated for the rest of the run then lies outside the heap's free block rather than
        inside it, and every later window reuses that one block. Traced on a 512x512x300 CT with 10 targets (2
        threads, resident memory after each window): the first window from the heap too left 0.11 GB in use in
        the heap, which grew after the second window, and the peak was 2.02 and 2.28 GB in two runs; with the
        first window outside it, 1.73 GB (20 targets: 2.30 GB)."""
        total = window_count(shape, self.model.config.patch_size, overlap)
        done = [0]
        kept: list[torch.Tensor] = []

        def predict(window: torch.Tensor) -> torch.Tensor:
            if cancel is not None and cancel.is_set():
                raise Cancelled("segmentation cancelled")
            size = (window.shape[0], len(targets), *window.shape[2:])
            if not kept or kept[0].shape != size:  # before the backbone's blocks, so that it lies below them
                kept[:] = [torch.empty(size, dtype=torch.float32, device=window.device)]
            out = kept[0]
            with from_heap() if done[0] else nullcontext():
                features, dense = self.network.backbone(window[:, :1], modality, context,
                                                        window[:, 1:] if window.shape[1] > 1 else None)
                head = self.network.head
                params = head.generate(targets.expand(window.shape[0], -1, -1), dense)  # once per window
                per_slice = window.shape[0] * len(targets) * self.model.config.network.head_channels
                step = max(1, HEAD_ELEMENTS // (per_slice * int(np.prod(window.shape[3:]))))
                for start in range(0, window.shape[2], step):  # the head's per-target temporaries stay small
                    part = slice(start, start + step)
                    out[:, :, part] = torch.sigmoid(head.apply(features[:, :, part], params).float())
                del features, dense, params
            done[0] += window.shape[0]
            report(0.05 + 0.85 * min(done[0] / total, 1.0), f"window {done[0]} of {total}")
            return out

        return predict

    def _autocast(self):
        """The network's arithmetic (:data:`PRECISIONS`) as an autocast context."""
        if self.precision == "float32" or (self.precision == "auto" and self.device.type == "cpu"):
            return torch.autocast(self.device.type, enabled=False)
        if self.device.type == "cuda" and self.precision == "auto":
            return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return torch.autocast(self.device.type, dtype=torch.bfloat16)
