"""Synthetic data: DICOM series written from volumes, phantoms, and images rendered from real shapes."""

import os
from pathlib import Path

# The project's shared real data (label maps, bone masks; see its NOTICE.md), beside the repository by default.
SHARED_DATA = Path(os.environ.get("MSKAI_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
