"""MRML glue of the AutoSegMSK module: imports with the slicer-core wheel alone (no Qt, no slicer.app)."""

from .logic import AutoSegMSKLogic

__all__ = ["AutoSegMSKLogic"]
