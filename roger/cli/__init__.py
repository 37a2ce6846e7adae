"""The `roger` command line (also ``python -m roger``)."""

from roger.cli.main import main

__all__ = ["main"]
