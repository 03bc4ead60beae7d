"""Before the network: resampling to the model grid, intensity rules, the body box, PET in SUV, and what an
image shows (modality, region)."""
