"""Bone segmentation: labels, preprocessing, inference, post-processing, outputs, metrics (training: mskai.training)."""
