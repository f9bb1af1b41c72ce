"""An example pipeline stage built on videogen-shared: it titles a job's video with a paid API."""

__all__ = ["__version__"]

__version__ = "0.1.0"
