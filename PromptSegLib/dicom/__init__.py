"""DICOM objects that reference their source series: RT Structure Sets, DICOM SEG, and their validation."""
