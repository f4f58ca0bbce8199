"""Finished work of an interrupted run, kept beside its output so `--resume` can continue.

`.NAME.partial/` beside the output holds `manifest.json` (what the run is: command, model,
resolved recipe, seed), each finished synthesis round (`round_NNNN.pt`, written atomically) and
named stages (`stage_NAME.pt`). A run that finishes removes it; an interrupted one leaves it. A
`--resume` whose model, recipe or seed differ is refused with one line: continuing would mix two
different runs into one output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dfq.errors import DfqError
from dfq.files import atomic_path, remove_path
from dfq.synth.registry import Round


class WorkDir:
    """The `.NAME.partial` directory of output `out` (see the module docstring)."""

    def __init__(self, out: str | Path, identity: dict[str, Any], resume: bool) -> None:
        out = Path(out)
        self.path = out.with_name(f".{out.name}.partial")
        self.identity = json.loads(json.dumps(identity, default=str))
        manifest = self.path / "manifest.json"
        if resume:
            if not manifest.is_file():
                raise DfqError(
                    f"nothing to resume: {self.path} does not exist; run without --resume"
                )
            _same(json.loads(manifest.read_text()), self.identity, self.path)
        else:
            remove_path(self.path)
            self.path.mkdir(parents=True)
            manifest.write_text(json.dumps(self.identity, indent=2))
        self.resumed: list[str] = []

    def load(self, r: int) -> tuple[Round, dict] | None:
        f = self.path / f"round_{r:04d}.pt"
        if not f.is_file():
            return None
        data = torch.load(f, map_location="cpu", weights_only=True)
        self.resumed.append(f"round {r}")
        return Round(data["images"], data["labels"], data["terms"], data["history"]), data["state"]

    def save(self, r: int, result: Round, state: dict) -> None:
        data = {
            "images": result.images.cpu(),
            "labels": result.labels.cpu(),
            "terms": result.terms,
            "history": result.history,
            "state": state,
        }
        with atomic_path(self.path / f"round_{r:04d}.pt", overwrite=True) as tmp:
            torch.save(data, tmp)

    def save_stage(self, name: str, obj: Any) -> None:
        with atomic_path(self.path / f"stage_{name}.pt", overwrite=True) as tmp:
            torch.save(obj, tmp)

    def load_stage(self, name: str) -> Any | None:
        f = self.path / f"stage_{name}.pt"
        if not f.is_file():
            return None
        self.resumed.append(f"stage {name}")
        return torch.load(f, map_location="cpu", weights_only=True)

    def finish(self) -> None:
        remove_path(self.path)


def _same(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    for key in ("command", "model", "seed", "recipe"):
        if saved.get(key) != now.get(key):
            raise DfqError(
                f"--resume: {path} was made with another {key} "
                f"({_short(saved.get(key))} then, {_short(now.get(key))} now); "
                "rerun without --resume to start over"
            )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
