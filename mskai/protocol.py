"""What the `mskai` process says on stderr, read by the launcher (``runner.engine``): one error line with the prefix,
and JSON progress lines with a "stage". Standard library only: the Slicer modules import it through the launcher."""

from __future__ import annotations

import json

ERROR_PREFIX = "mskai: error: "


def error_line(message: str) -> str:
    return f"{ERROR_PREFIX}{message}"


def progress_line(stage: str, fraction: float, **extra) -> str:
    """One JSON progress line: {"stage", "progress" (0-1, 4 digits), ...extra}."""
    return json.dumps({"stage": stage, "progress": round(fraction, 4), **extra})
