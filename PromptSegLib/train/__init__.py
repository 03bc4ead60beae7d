"""Training and measuring segmentation models: dataset specs and layouts (MSD, nnU-Net, HECKTOR, OpenKBP),
the training loop, evaluation on a split and post-processing tuning."""
