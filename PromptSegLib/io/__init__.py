"""Reading and writing images: NIfTI/NRRD/MHA files and DICOM series (one reader), atomic output files."""
