"""Blob stores: where the DICOM objects themselves live."""
