"""mskai: the pure-Python engine of SlicerAutoSegMSK (no Slicer or Qt imports here)."""

__version__ = "0.1.0"


class MskaiError(Exception):
    """An error with a message meant for the user (bad input, unusable data, locked database...)."""


def check_range(name: str, value, low, high, integer: bool = False):
    """Return ``value`` when it lies in [low, high] (NaN never does), else raise MskaiError naming ``name``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not ok or (integer and value != int(value)):
        kind = "a whole number" if integer else "a number"
        raise MskaiError(f"{name} must be {kind} from {low:g} to {high:g}, not {value!r}")
    return value


DEMO_NOTICE = (
    "The models bundled with SlicerAutoSegMSK are demo models trained on synthetic data. "
    "They are not medical devices and must not be used for clinical decisions."
)
