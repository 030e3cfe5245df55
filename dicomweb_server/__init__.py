"""dicomweb_server: an async DICOMweb (PS3.18) server."""

__version__ = "0.1.0"
__all__ = ["__version__"]
