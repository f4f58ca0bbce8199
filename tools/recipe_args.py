"""`--synth KEY=VALUE` / `--quant KEY=VALUE` for the benchmark scripts: recipe values changed for
every run of a benchmark, parsed as YAML (`1e-5` a number) like `dfq quantize --set`."""

from __future__ import annotations

import argparse

from dfq.config import read_yaml


def add_recipe_changes(ap: argparse.ArgumentParser, section: str, applies_to: str) -> None:
    ap.add_argument(
        f"--{section}",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a {section} recipe value for {applies_to} (YAML value), repeatable",
    )


def recipe_changes(values: list[str]) -> dict:
    """['iters=40', 'relation=false'] -> {'iters': 40, 'relation': False}."""
    return {k: read_yaml(v) for k, v in (a.split("=", 1) for a in values)}
