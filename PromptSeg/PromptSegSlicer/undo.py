"""Undo and redo of PromptSeg's changes to a segmentation: one hidden segment editor logic per segmentation
node, whose history holds the states saved before each run. No Qt.
"""
from __future__ import annotations

import slicer


class UndoMixin:
    """The segment editor history of each segmentation PromptSeg writes. Needs ``self.scene`` and
    ``self._editors`` (segmentation node ID -> (editor logic, editor node)), which ``PromptSegLogic``
    provides."""

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
