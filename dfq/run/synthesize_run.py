"""`run_synthesize`: what `dfq synthesize` does, from a loaded model to a written calibration set.

Methods that play against a student (RGAL's adversarial term, DFAD's game) get the model quantized
to W4A4 with the default protocol: the set is for quantizers, and that is the student it should
challenge. Finished rounds are kept beside the output so `--resume` continues an interrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from dfq.calibration import FORMATS, CalibrationSet, save_calibration
from dfq.config import config_to_dict
from dfq.errors import DfqError
from dfq.files import write_json
from dfq.models.data_config import DataConfig
from dfq.quant.quant_config import QuantConfig
from dfq.run.pictures import calibration_picture, loss_picture
from dfq.run.quantized_student import quantized_student
from dfq.run.resume import WorkDir
from dfq.synth import SynthConfig, synthesize

STUDENT_BITS = 4


def default_output(model_name: str, fmt: str) -> Path:
    stem = model_name.replace(":", "_")
    return Path(f"{stem}-calib.npz" if fmt == "npz" else f"{stem}-calib")


def run_synthesize(
    model: nn.Module,
    name: str,
    data_config: DataConfig,
    cfg: SynthConfig,
    out: str | Path,
    fmt: str = "npz",
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> CalibrationSet:
    """Synthesize and write the set as `fmt`, plus `<out>.report.json`, `<out>.calibration.png`
    and `<out>.losses.png` beside it."""
    if fmt not in FORMATS:
        raise DfqError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)} (--format)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DfqError(f"{out} already exists; choose another --out or pass --overwrite")
    work = WorkDir(
        out,
        {
            "command": "synthesize",
            "model": name,
            "seed": cfg.seed,
            "recipe": {"synth": config_to_dict(cfg)},
        },
        resume,
    )
    start = time.perf_counter()
    student = None
    if cfg.method != "bn":
        qcfg = QuantConfig(wbits=STUDENT_BITS, abits=STUDENT_BITS)
        student = quantized_student(model, qcfg, data_config, cfg.seed, device)
    calib = synthesize(
        model,
        cfg,
        data_config,
        student=student,
        device=device,
        model_name=name,
        progress=progress,
        store=work,
    )
    save_calibration(calib, out, fmt, overwrite=overwrite)
    calibration_picture(calib, model.cpu(), name, _beside(out, "calibration.png"))
    loss_picture(calib, {}, _beside(out, "losses.png"))
    report: dict[str, Any] = {
        "command": "synthesize",
        **calib.metadata,
        "out": str(out),
        "format": fmt,
        "resumed": work.resumed,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    write_json(report, _beside(out, "report.json"))
    work.finish()
    return calib


def _beside(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.name}.{suffix}")
