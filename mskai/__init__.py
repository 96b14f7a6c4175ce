"""mskai: the pure-Python engine of SlicerAutoSegMSK (no Slicer or Qt imports here)."""

__version__ = "0.1.0"


class MskaiError(Exception):
    """An error with a message meant for the user (bad input, unusable data, locked database...)."""


DEMO_NOTICE = (
    "The models bundled with SlicerAutoSegMSK are demo models trained on synthetic data. "
    "They are not medical devices and must not be used for clinical decisions."
)
