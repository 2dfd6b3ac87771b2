"""chatforge: the ChatGPT recipe as one reproducible pipeline (library code shared by stages, flows, CLI and tests)."""

__version__ = "0.1.0"
