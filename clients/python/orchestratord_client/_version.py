"""The package's version, in one place (the User-Agent names it)."""

__version__ = "0.1.0"
