"""`run_synthesize`: what `dfq synthesize` does, from a loaded model to a written calibration set."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dfq.calibration import FORMATS, CalibrationSet, save_calibration
from dfq.errors import DfqError
from dfq.files import write_json
from dfq.models.data_config import DataConfig
from dfq.synth import SynthConfig, synthesize


def default_output(model_name: str, fmt: str) -> Path:
    stem = model_name.replace(":", "_")
    return Path(f"{stem}-calib.npz" if fmt == "npz" else f"{stem}-calib")


def run_synthesize(model: nn.Module, name: str, data_config: DataConfig, cfg: SynthConfig,
                   out: str | Path, fmt: str = "npz", device: str = "cpu",
                   overwrite: bool = False, progress: bool = True) -> CalibrationSet:
    """Synthesize and write the set as `fmt`, plus `<out>.report.json` beside it."""
    if fmt not in FORMATS:
        raise DfqError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)} (--format)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DfqError(f"{out} already exists; choose another --out or pass --overwrite")
    calib = synthesize(model, cfg, data_config, device=device, model_name=name, progress=progress)
    save_calibration(calib, out, fmt, overwrite=overwrite)
    report: dict[str, Any] = {"command": "synthesize", **calib.metadata, "out": str(out),
                              "format": fmt}
    write_json(report, out.with_name(out.name + ".report.json"))
    return calib
