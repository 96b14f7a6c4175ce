"""ACL classification of sagittal knee MR: series choice, preprocessing, MRNet-style model, Grad-CAM, inference.

The one class table of the ACL task: four grades (label = index) or binary, and the mapping between them.
"""

GRADES = ("healthy", "minor strain", "partial rupture", "complete rupture")
BINARY_CLASSES = ("intact", "torn")
CLASS_NAMES = {4: GRADES, 2: BINARY_CLASSES}


def to_binary(grade: int) -> int:
    """Four grades -> intact (healthy, minor strain) 0 / torn (partial or complete rupture) 1, as the seeds and
    MRNet count tears."""
    return int(grade >= 2)
