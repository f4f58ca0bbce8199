"""The `dfq` command: a thin Click layer over the library; each command parses, calls, prints.

`group` defines the `main` group; each `*_cmd` module attaches one command to it on import.
"""

from __future__ import annotations

from dfq.cli import evaluate_cmd, export_cmd, models_cmd, quantize_cmd, synthesize_cmd  # noqa: F401
from dfq.cli.group import main

__all__ = ["main"]
