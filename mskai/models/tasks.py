"""Task names of model packages and the bundled model each task uses by default: the one place they are written."""

SEGMENTATION = "segmentation"
ACL_CLASSIFICATION = "acl-classification"
KNEE_LIGAMENTS = "knee-ligaments"  # femur, tibia, ACL, PCL on sagittal slices (mskai.acl.ligaments)
DEFAULT_MODEL = {SEGMENTATION: "mskai-bones-demo", ACL_CLASSIFICATION: "mskai-acl-demo",
                 KNEE_LIGAMENTS: "mskai-knee-ligaments-demo"}
BONE_MODEL, ACL_MODEL = DEFAULT_MODEL[SEGMENTATION], DEFAULT_MODEL[ACL_CLASSIFICATION]
