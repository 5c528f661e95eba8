"""The ``hdsd`` command line (click)."""

from ._main import main as main
