"""Segmentation results to files: ``.seg.nrrd`` (written and read), label maps, segments on another grid, and
overlay pictures."""
