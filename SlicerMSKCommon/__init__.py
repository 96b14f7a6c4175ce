"""The Slicer glue both modules share, shipped beside them: ``widget`` (the Qt widget base), ``jobs`` (engine runs
in a background process) and ``nodes`` (MRML node helpers). ``jobs`` and ``nodes`` need slicer-core alone."""
