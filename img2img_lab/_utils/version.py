"""The package's version, in one place below every layer (the face, manifests and ``--version`` read it)."""

__version__ = "0.1.0"
