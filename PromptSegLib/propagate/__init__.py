"""Interactive propagation (the Prompt U-Net design): a 2D dual-encoder network that carries one drawn slice
through the volume, filling from several drawn slices, its training, evaluation and model card."""
