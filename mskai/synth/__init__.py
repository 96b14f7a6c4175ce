"""Synthetic data: DICOM series written from volumes, and simple phantoms."""
