"""Use cases that join the stages: one segmentation request from an image file to every output file."""
