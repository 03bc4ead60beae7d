"""Inference: sliding windows, one backbone pass per context, probabilities, post-processing, the closer look,
PET/CT fusion and the prompt check."""
