"""`run_quantize`: what `dfq quantize` does, from a loaded model to a written output directory.

Calibration set (given, or synthesized with the quantized model as adversarial student), then
`dfq.quant.quantize_`, then every output written into a temporary directory that is renamed to the
final one at the end, so an interrupted run never leaves a half-written result.
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
from dfq.export import export_quantized
from dfq.files import atomic_path, write_json, write_yaml
from dfq.models.data_config import DataConfig
from dfq.quant.insert import prepare
from dfq.quant.pipeline import quantize_
from dfq.quant.quant_config import QuantConfig
from dfq.quant.saved import FILENAME, save_quantized
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


def run_quantize(model: nn.Module, name: str, data_config: DataConfig, cfg: QuantConfig,
                 out: str | Path, calib: str | Path | None = None,
                 synth_cfg: SynthConfig | None = None, seed: int = 0, device: str = "cpu",
                 overwrite: bool = False, progress: bool = True,
                 export: bool = True) -> dict[str, Any]:
    """Calibrate, quantize, fine-tune and write every output to `out`; returns the report."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DfqError(f"{out} already exists; choose another --out or pass --overwrite")
    start = time.perf_counter()
    model = model.eval().to(device)
    teacher = copy.deepcopy(model)
    synth_seconds = None
    if calib is not None:
        calib_set = load_calib(calib, data_config, synth_cfg.num_images if synth_cfg else None)
    else:
        calib_set, synth_seconds = _synthesize(model, data_config, cfg, synth_cfg, name, device,
                                               progress)
    report = quantize_(model, cfg, calib_set.images.to(device), teacher, progress, seed)
    if synth_seconds is not None:
        report["stages"] = {"synthesize": {"seconds": synth_seconds,
                                           "losses": calib_set.metadata.get("final_losses")},
                            **report["stages"]}
    recipe = resolved_recipe(cfg, None if calib else synth_cfg)
    report = {"command": "quantize", "model": name, "data_config": data_config.to_dict(),
              "seed": seed, "device": str(device), "versions": versions(), "config": recipe,
              "calibration": str(calib) if calib else "synthesized", **report,
              "total_seconds": round(time.perf_counter() - start, 3)}
    write_outputs(out, model.cpu(), name, data_config, cfg, calib_set, report, recipe, overwrite,
                  export)
    return report


def write_outputs(out: Path, model: nn.Module, name: str, data_config: DataConfig,
                  cfg: QuantConfig, calib_set: CalibrationSet, report: dict, recipe: dict,
                  overwrite: bool, export: bool = True) -> None:
    """All outputs into a temporary directory, renamed to `out` at the end (Ctrl-C safe).

    The ONNX export comes first: it prepares the model for fused integer kernels (output
    quantizers, bias grid), so `quantized.pt` is saved as the exact model `model.onnx` computes.
    """
    with atomic_path(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        if export:
            start = time.perf_counter()
            report["export"] = export_quantized(model, tmp, data_config,
                                                calib_set.images[:EXPORT_CHECK_IMAGES])
            report["export"]["path"] = str(out / "model.onnx")
            seconds = round(time.perf_counter() - start, 3)
            report["stages"]["export"] = {"seconds": seconds}
            report["total_seconds"] = round(report["total_seconds"] + seconds, 3)
        save_quantized(model, tmp / FILENAME, name, data_config, cfg)
        save_calibration(calib_set, tmp / "calibration.npz", "npz")
        write_yaml(recipe, tmp / "recipe.yaml")
        write_json(report, tmp / "report.json")


def _synthesize(model: nn.Module, data_config: DataConfig, cfg: QuantConfig,
                synth_cfg: SynthConfig, name: str, device: str,
                progress: bool) -> tuple[CalibrationSet, float]:
    """Synthesis with a student quantized at range-init on Gaussian noise (no fine-tuning)."""
    start = time.perf_counter()
    student = copy.deepcopy(model)
    noise = torch.randn(min(64, synth_cfg.num_images), *data_config.input_size,
                        generator=torch.Generator().manual_seed(synth_cfg.seed)).to(device)
    prepare(student, cfg, [noise])
    calib_set = synthesize(model, synth_cfg, data_config, student=student, progress=progress,
                           device=device, model_name=name)
    return calib_set, round(time.perf_counter() - start, 3)
