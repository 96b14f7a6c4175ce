"""Where the engine runs: in a background process for the Slicer modules (``engine``), over every series or study of
an archive (``batch``), on a local or an existing Dask cluster (``cluster``)."""
