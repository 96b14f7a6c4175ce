"""ACL classification of sagittal knee MR: series choice, preprocessing, MRNet-style model, Grad-CAM, training."""
