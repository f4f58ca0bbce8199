"""`run_quantize`: what `dfq quantize` does, from a loaded model to a written output directory.

Calibration set (given, or synthesized by the chosen method with the model quantized as the run
will quantize it as the student), then `dfq.quant.quantize_`, then every output written into a
temporary directory that becomes the final one at the end, so an interrupted run never leaves a
half-written result. Finished synthesis rounds and the quantized model are kept in the output's
work directory (`dfq.run.resume`), so `--resume` continues an interrupted run.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfq.calibration import CalibrationSet, save_calibration
from dfq.config import config_to_dict
from dfq.data import load_images
from dfq.errors import DfqError
from dfq.export import ONNX_FILENAME, export_quantized
from dfq.files import atomic_path, write_json, write_yaml
from dfq.models.data_config import DataConfig
from dfq.quant.pipeline import quantize_
from dfq.quant.quant_config import QuantConfig
from dfq.quant.saved import FILENAME, apply_payload, quantized_payload, save_quantized
from dfq.run.accuracy import kept_accuracy
from dfq.run.pictures import write_pictures
from dfq.run.quantized_student import quantized_student
from dfq.run.report_md import write_report_md
from dfq.run.resume import WorkDir
from dfq.run.versions import versions
from dfq.synth import SynthConfig, synthesize

EXPORT_CHECK_IMAGES = 256  # calibration images that set output ranges and check onnxruntime


def resolved_recipe(cfg: QuantConfig, synth_cfg: SynthConfig | None) -> dict[str, Any]:
    out = {"quant": config_to_dict(cfg)}
    if synth_cfg is not None:
        out = {"synth": config_to_dict(synth_cfg), **out}
    return out


def load_calib(path: str | Path, data_config: DataConfig, limit: int | None) -> CalibrationSet:
    """A calibration set from `dfq synthesize` output or real images, checked against the model."""
    images = load_images(path, data_config, limit=limit)
    images.check_fits(data_config)
    x = images.normalize(images.x, data_config)
    y = images.y if images.y is not None else torch.full((len(x),), -1, dtype=torch.long)
    return CalibrationSet(x, y, {"data_config": data_config.to_dict(), "source": str(path)})


def run_quantize(
    model: nn.Module,
    name: str,
    data_config: DataConfig,
    cfg: QuantConfig,
    out: str | Path,
    calib: str | Path | None = None,
    synth_cfg: SynthConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    export: bool = True,
    eval_data: str | Path | None = None,
    resume: bool = False,
    recipe_choice: dict | None = None,
) -> dict[str, Any]:
    """Calibrate, quantize, fine-tune and write every output to `out`; returns the report.

    `eval_data`: the user's real labelled images, on which FP, the quantized model and
    `model.onnx` are measured at the end (evaluation only). `recipe_choice`: which recipe the
    run uses and why, recorded in the report.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise DfqError(f"{out} already exists; choose another --out or pass --overwrite")
    recipe = resolved_recipe(cfg, None if calib else synth_cfg)
    work = WorkDir(
        out,
        {
            "command": "quantize",
            "model": name,
            "seed": seed,
            "recipe": recipe,
            "calibration": str(calib) if calib else "synthesized",
        },
        resume,
    )
    start = time.perf_counter()
    model = model.eval().to(device)
    teacher = copy.deepcopy(model)
    calib_set, synth_seconds = _calibration(
        model, name, data_config, cfg, synth_cfg, calib, seed, device, progress, work
    )
    report = _quantized(model, teacher, cfg, calib_set, seed, progress, work)
    if synth_seconds is not None:
        report["stages"] = {
            "synthesize": {
                "seconds": synth_seconds,
                "losses": calib_set.metadata.get("final_losses"),
            },
            **report["stages"],
        }
    report = {
        "command": "quantize",
        "model": name,
        "data_config": data_config.to_dict(),
        "seed": seed,
        "device": str(device),
        "versions": versions(),
        "config": recipe,
        "recipe_choice": recipe_choice or {},
        "method": None if calib else synth_cfg.method,
        "first_last_bits": cfg.edge_bits,
        "calibration": str(calib) if calib else "synthesized",
        **report,
        "resumed": work.resumed,
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    write_outputs(
        out,
        model.cpu(),
        teacher.cpu(),
        name,
        data_config,
        cfg,
        calib_set,
        report,
        recipe,
        overwrite,
        export,
        eval_data,
        progress,
    )
    work.finish()
    return report


def _calibration(
    model: nn.Module,
    name: str,
    data_config: DataConfig,
    cfg: QuantConfig,
    synth_cfg: SynthConfig | None,
    calib: str | Path | None,
    seed: int,
    device: str,
    progress: bool,
    work: WorkDir,
) -> tuple[CalibrationSet, float | None]:
    if calib is not None:
        return load_calib(calib, data_config, synth_cfg.num_images if synth_cfg else None), None
    start = time.perf_counter()
    student = quantized_student(model, cfg, data_config, synth_cfg.seed, device)
    calib_set = synthesize(
        model,
        synth_cfg,
        data_config,
        student=student,
        progress=progress,
        device=device,
        model_name=name,
        store=work,
    )
    return calib_set, round(time.perf_counter() - start, 3)


def _quantized(
    model: nn.Module,
    teacher: nn.Module,
    cfg: QuantConfig,
    calib_set: CalibrationSet,
    seed: int,
    progress: bool,
    work: WorkDir,
) -> dict[str, Any]:
    """`quantize_` on the set (or its live source), or the quantized model a resumed run kept."""
    saved = work.load_stage("quantized")
    if saved is not None:
        apply_payload(model, saved["payload"])
        model.requires_grad_(False)
        return saved["report"]
    data = calib_set.source if calib_set.source is not None else calib_set.images
    device = next(model.parameters()).device
    if isinstance(data, torch.Tensor):
        data = data.to(device)
    report = quantize_(model, cfg, data, teacher, progress, seed)
    payload = quantized_payload(model, "", calib_set.data_config, cfg)
    work.save_stage("quantized", {"payload": payload, "report": report})
    return report


def write_outputs(
    out: Path,
    model: nn.Module,
    teacher: nn.Module,
    name: str,
    data_config: DataConfig,
    cfg: QuantConfig,
    calib_set: CalibrationSet,
    report: dict,
    recipe: dict,
    overwrite: bool,
    export: bool = True,
    eval_data: str | Path | None = None,
    progress: bool = True,
) -> None:
    """All outputs into a temporary directory, renamed to `out` at the end (Ctrl-C safe).

    The ONNX export comes first: it prepares the model for fused integer kernels (output
    quantizers, bias grid), so `quantized.pt` is saved as the exact model `model.onnx` computes,
    and the pictures and accuracies describe that model.
    """
    with atomic_path(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        if export:
            start = time.perf_counter()
            report["export"] = export_quantized(
                model, tmp, data_config, calib_set.images[:EXPORT_CHECK_IMAGES]
            )
            report["export"]["path"] = str(out / ONNX_FILENAME)
            _timed(report, "export", start)
        save_quantized(model, tmp / FILENAME, name, data_config, cfg)
        save_calibration(calib_set, tmp / "calibration.npz", "npz")
        write_yaml(recipe, tmp / "recipe.yaml")
        start = time.perf_counter()
        pictures = write_pictures(tmp, calib_set, teacher, model, report, name)
        _timed(report, "pictures", start)
        if eval_data is not None:
            start = time.perf_counter()
            report["accuracy"] = kept_accuracy(
                teacher,
                model,
                tmp / ONNX_FILENAME if export else None,
                eval_data,
                data_config,
                progress=progress,
            )
            _timed(report, "evaluate", start)
        write_json(report, tmp / "report.json")
        write_report_md(report, tmp / "report.md", pictures)


def _timed(report: dict, stage: str, start: float) -> None:
    seconds = round(time.perf_counter() - start, 3)
    report["stages"][stage] = {**report["stages"].get(stage, {}), "seconds": seconds}
    report["total_seconds"] = round(report["total_seconds"] + seconds, 3)
