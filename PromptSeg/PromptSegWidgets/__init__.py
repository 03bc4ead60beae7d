"""The module panel's Qt wiring, one mixin per part of the panel (jobs, models, propagation, outputs, PET/CT).

Each mixin only reads the panel (``self.ui``), calls the Qt-free logic (``self.logic``,
:class:`PromptSegSlicer.PromptSegLogic`) and shows what it returns; ``PromptSegWidget`` in ``PromptSeg.py``
combines them. Nothing here is imported outside Slicer (it needs ``qt`` and ``slicer``).
"""
