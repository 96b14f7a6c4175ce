"""The tissue classes of the knee model, their MR intensities per contrast, the slice planes, and the tissue map of
one subject (``KneeAnatomy``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Tissue classes of the knee model; every class from CORTEX_F on is bone (cortex and marrow per bone).
(AIR, MUSCLE, FAT, SKIN, CARTILAGE, MENISCUS, FLUID, TENDON, ARTERY, VEIN,
 CORTEX_F, MARROW_F, CORTEX_T, MARROW_T, CORTEX_P, MARROW_P, CORTEX_FIB, MARROW_FIB) = range(18)
N_TISSUES = 18
BONES = {"femur": (CORTEX_F, MARROW_F), "tibia": (CORTEX_T, MARROW_T), "patella": (CORTEX_P, MARROW_P),
         "fibula": (CORTEX_FIB, MARROW_FIB)}
NEVER = 255  # recess value of voxels that never fill with fluid

# Mean intensities (low, high) per tissue kind and contrast, on a 0-1 scale where fluid or fat is brightest.
PROTOCOLS = {
    "PD": dict(fat=(.80, 1.0), marrow=(.72, .92), muscle=(.26, .38), cartilage=(.45, .60), fluid=(.58, .78),
               oedema=(.50, .70), acl=(.13, .22), pcl=(.04, .09), dark=(.02, .07), skin=(.35, .5)),
    "PD fat-sat": dict(fat=(.10, .22), marrow=(.10, .22), muscle=(.26, .38), cartilage=(.42, .60),
                       fluid=(.85, 1.0), oedema=(.62, .85), acl=(.07, .15), pcl=(.03, .07), dark=(.02, .06),
                       skin=(.25, .4)),
    "T2 fat-sat": dict(fat=(.07, .15), marrow=(.06, .14), muscle=(.12, .22), cartilage=(.25, .40),
                       fluid=(.90, 1.0), oedema=(.60, .85), acl=(.04, .10), pcl=(.02, .05), dark=(.01, .04),
                       skin=(.15, .3)),
    "T1": dict(fat=(.85, 1.0), marrow=(.78, .95), muscle=(.24, .34), cartilage=(.30, .42), fluid=(.10, .20),
               oedema=(.25, .36), acl=(.13, .22), pcl=(.04, .09), dark=(.02, .06), skin=(.3, .45)),
    # without fat suppression, as the shared real series (multi-echo T2 spin echo): fat and marrow stay bright
    "T2": dict(fat=(.75, .95), marrow=(.55, .80), muscle=(.12, .22), cartilage=(.25, .40), fluid=(.85, 1.0),
               oedema=(.55, .80), acl=(.05, .12), pcl=(.02, .06), dark=(.01, .04), skin=(.25, .4)),
}
PROTOCOL_WEIGHTS = (0.25, 0.3, 0.15, 0.1, 0.2)
PLANE_AXES = {  # directions of the i, j, k axes (columns) in LPS before the oblique tilt
    "sagittal": np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float).T,
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T,
    "axial": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float).T,
}


@dataclass
class KneeAnatomy:
    """One subject's tissue map (axes LR, AP with anterior +, IS; mm = index * spacing) and landmarks."""

    subject: str
    tissue: np.ndarray
    recess: np.ndarray
    spacing: np.ndarray
    landmarks: dict = field(default_factory=dict)

    @property
    def lateral(self) -> int:
        return int(self.landmarks["lateral"])

    def recesses(self):
        """(flat indices, levels) of the voxels that can fill with fluid (kept: most voxels never do)."""
        if not hasattr(self, "_recesses"):
            index = np.flatnonzero(self.recess < NEVER)
            self._recesses = (index, self.recess.ravel()[index])
        return self._recesses
