"""PromptSegLib: text-prompted 3D medical image segmentation (DuPLUS dual prompts), no Slicer needed.

Typical use::

    from PromptSegLib import Segmenter, read_image
    result = Segmenter().segment(read_image("ct.nii.gz"), "CT", "thorax", ["left lung", "right lung"])
"""
from .errors import Cancelled, InputImageError, ModelError, OutputError, PromptError, PromptSegError
from .imageio import read_image, write_image
from .inference import SegmentationResult, Segmenter
from .model_io import Model, ModelConfig, load_model, save_model
from .network import DuPLUSNet, NetworkConfig

__version__ = "0.1.0"
__all__ = ["Cancelled", "DuPLUSNet", "InputImageError", "Model", "ModelConfig", "ModelError", "NetworkConfig",
           "OutputError", "PromptError", "PromptSegError", "SegmentationResult", "Segmenter", "load_model",
           "read_image", "save_model", "write_image"]
