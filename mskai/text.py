"""Text from DICOM files and users on its way to a terminal or a Slicer node name: control characters never pass."""

from __future__ import annotations

import re

# Control characters (C0 but newline and tab, DEL, C1) and bidirectional overrides: printed as escapes, so
# names and paths from DICOM files cannot move the cursor, recolour or rewrite the user's terminal.
CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (0x0A, 0x09)}
CONTROL_ESCAPES.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})

_UNPRINTABLE = re.compile("[" + "".join(map(chr, CONTROL_ESCAPES)) + "\t\n]+")
NAME_LENGTH = 128


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (for terminals and logs)."""
    return text.translate(CONTROL_ESCAPES)


def clean_name(text, fallback: str = "unnamed", limit: int = NAME_LENGTH) -> str:
    """A display name made from free text (a DICOM description, a patient's name as shown in Slicer): control
    characters (NUL included, which hangs MRML's unique naming), tabs and newlines become one space, runs of
    spaces one space, at most ``limit`` characters; ``fallback`` when nothing is left."""
    cleaned = " ".join(_UNPRINTABLE.sub(" ", str(text or "")).split())[:limit].strip()
    return cleaned or fallback


def one_line(exc) -> str:
    """An exception's message on one short line (for MskaiError messages built from library errors)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
