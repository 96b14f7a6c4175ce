"""MRML glue of the ACLClassifier module: imports with the slicer-core wheel alone (no Qt, no slicer.app).

The Slicer glue both modules need (the engine job, volume node <-> Volume, tables, subject hierarchy, overlays,
slice jumps) has one home, AutoSegMSKLib (job.py, nodes.py); the process launcher is mskai.runner.engine.
"""

from .logic import ACLClassifierLogic

__all__ = ["ACLClassifierLogic"]
