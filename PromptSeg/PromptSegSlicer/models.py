"""The model manager of the PromptSeg logic: which models are available (bundled, imported into the per-user
cache, downloadable from a catalogue), importing and downloading one, the targets a model offers, and the
devices torch can run it on. No Qt.
"""
from __future__ import annotations

from pathlib import Path

from .dependencies import availableDevices, checkDependencies, ensureLibraryImportable, missingDependencies
from .jobs import Report, SegmentationJob
from .requests import DownloadRequest

AUTO_MODEL = "automatic"  # route each request to the model trained for it (PromptSegLib.models.catalogue.route_model)


class ModelsMixin:
    """Model catalogue and installation, and the environment models run in. Needs ``_startJob`` and
    ``_finishJob`` (``JobRunnerMixin``)."""

    missingDependencies = staticmethod(missingDependencies)
    availableDevices = staticmethod(availableDevices)

    @staticmethod
    def availableModels(kind: str = "segmentation") -> list[tuple[str, Path]]:
        """(name, folder) of the bundled models of ``kind`` (``segmentation``, ``propagation`` or ``prognosis``)
        and of those of that kind imported into the per-user cache (``~/.promptseg/models``, kept across Slicer
        upgrades)."""
        ensureLibraryImportable()
        from PromptSegLib.errors import ModelError
        from PromptSegLib.models.catalogue import installed_models, load_catalogue
        from PromptSegLib.models.folder import BUNDLED_MODELS, folder_identity

        models = [(e["name"], BUNDLED_MODELS / e["folder"]) for e in load_catalogue()
                  if e.get("folder") and e.get("kind", "segmentation") == kind]
        for name, folder in installed_models().items():
            try:
                if folder_identity(folder).kind == kind:
                    models.append((name, folder))
            except ModelError:
                continue  # not a model folder: listed nowhere
        return models

    @staticmethod
    def importModel(path) -> Path:
        """Check a model folder or ``.zip`` (hospitals without internet) and install it in the per-user cache."""
        ensureLibraryImportable()
        from PromptSegLib.models.catalogue import import_model

        return import_model(path)

    @staticmethod
    def defaultModelFolder() -> Path:
        ensureLibraryImportable()
        checkDependencies()
        from PromptSegLib.models.folder import default_model_folder

        return default_model_folder()

    @staticmethod
    def targetSuggestions(model=None, untrained: bool = False) -> list[str]:
        """What the target completer offers for ``model`` (name or folder; ``None`` or ``AUTO_MODEL``: every
        available model): its trained targets with their vocabulary synonyms, and with ``untrained`` every
        vocabulary target too. Sorted."""
        ensureLibraryImportable()
        from PromptSegLib.models.catalogue import resolve_model
        from PromptSegLib.models.folder import read_config
        from PromptSegLib.text.vocabulary import default_vocabulary

        vocabulary = default_vocabulary()
        folders = ([folder for _, folder in ModelsMixin.availableModels()] if model in (None, AUTO_MODEL)
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
        from PromptSegLib.models.catalogue import catalogue_entries, installed_models

        installed = installed_models()
        return [e for e in catalogue_entries() if e.get("url") and e["name"] not in installed]

    def startModelDownload(self, name: str, onProgress: Report | None = None) -> SegmentationJob:
        """Download and install catalogue model ``name`` in a background thread (``job.cancel()`` stops it,
        nothing is installed); ``finishModelDownload`` gives the installed folder."""
        ensureLibraryImportable()
        from PromptSegLib.errors import Cancelled
        from PromptSegLib.models.catalogue import download_model

        def work(job: SegmentationJob, report) -> None:
            def progress(done: int, total: int | None) -> None:  # after each chunk, before installing
                report(done / total if total else 0.0, f"downloading {name}: {done / 1e6:.1f} MB")
                if job.cancelRequested:
                    raise Cancelled(f"download of {name} cancelled")

            job.result = download_model(name, progress=progress)

        return self._startJob(SegmentationJob(DownloadRequest(name), None, None), work, onProgress)

    def finishModelDownload(self, job: SegmentationJob, timeout: float | None = None) -> Path:
        """Main thread: the installed model folder of a finished download job (raises as ``_finishJob``)."""
        self._finishJob(job, timeout, "download")
        job.message = f"installed {job.result.name}"
        return job.result
