"""The version, in a module of its own so private modules can read it without the package."""

__version__ = "0.1.0"
