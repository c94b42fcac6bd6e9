"""The ddkit version, in one place (read by the package metadata and written into every file)."""

__version__ = "0.3.1"
