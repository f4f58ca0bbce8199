"""`quantize_` (in place, the library entry) and `run_quantize` (what `dfq quantize` does).

Stages: fold + insert + range init ("prepare"), block reconstruction, network distillation, bake.
Each is timed and its losses kept for `report.json`.
"""
from __future__ import annotations

import copy
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfq.config import config_to_dict
from dfq.quant.config import QuantConfig
from dfq.quant.distill import distill, mean_kd_loss
from dfq.quant.layers import quant_layers
from dfq.quant.prepare import prepare
from dfq.quant.reconstruct import reconstruct

EXPORT_CHECK_IMAGES = 256  # calibration images that set output ranges and check onnxruntime


@contextmanager
def quantizers_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Every quantizer of `model` is the identity inside (the folded FP model); restored on exit."""
    qs = [q for layer in quant_layers(model).values()
          for q in (layer.weight_quantizer, layer.input_quantizer, layer.output_quantizer) if q is not None]
    old = [q.enabled for q in qs]
    for q in qs:
        q.enabled = False
    try:
        yield model
    finally:
        for q, v in zip(qs, old):
            q.enabled = v


@contextmanager
def _stage(report: dict, name: str) -> Iterator[dict]:
    start = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        yield info
    finally:
        report["stages"][name] = {"seconds": round(time.perf_counter() - start, 3), **info}


def quantize_(model: nn.Module, cfg: QuantConfig, calib: torch.Tensor, teacher: nn.Module | None = None,
              progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Quantize `model` in place on normalized calibration images `calib` (N, C, H, W).

    The FP `teacher` defaults to a copy of `model` taken before quantization. Returns a report:
    per-stage seconds and losses, per-layer bits, folded BN pairs and the layers left in float.
    """
    torch.manual_seed(seed)
    model.eval()
    teacher = (teacher if teacher is not None else copy.deepcopy(model)).eval()
    calib = calib.float()
    report: dict[str, Any] = {"stages": {}, "num_calibration_images": len(calib)}
    with _stage(report, "prepare") as info:
        batches = list(calib.split(cfg.calib_batch_size))
        prep = prepare(model, cfg, batches)
        info["kd_loss"] = round(mean_kd_loss(model, teacher, calib, cfg.kd_temperature), 6)
    report.update(bits={k: list(v) for k, v in prep.bits.items()}, folded_bn=len(prep.folded),
                  unquantized_layers=prep.unquantized)
    if cfg.reconstruct and cfg.recon_iters > 0:
        with _stage(report, "reconstruct") as info:
            fp = copy.deepcopy(model)
            with quantizers_disabled(fp):
                rec = reconstruct(model, fp, calib, cfg, progress)
            del fp
            info.update(skipped=rec["skipped"],
                        block_losses={k: [round(a, 6), round(b, 6)] for k, (a, b) in rec["block_losses"].items()},
                        kd_loss=round(mean_kd_loss(model, teacher, calib, cfg.kd_temperature), 6))
    if cfg.kd_iters > 0:
        with _stage(report, "distill") as info:
            info.update(distill(model, teacher, calib, cfg, progress, seed))
    with _stage(report, "bake") as info:
        for layer in quant_layers(model).values():
            layer.bake()
        model.requires_grad_(False)
        info["kd_loss"] = round(mean_kd_loss(model, teacher, calib, cfg.kd_temperature), 6)
    return report


def versions() -> dict[str, str]:
    import numpy
    import torchvision

    import dfq

    out = {"dfq": dfq.__version__, "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def resolved_recipe(cfg: QuantConfig, synth_cfg: Any | None) -> dict[str, Any]:
    out = {"quant": config_to_dict(cfg)}
    if synth_cfg is not None:
        out = {"synth": config_to_dict(synth_cfg), **out}
    return out


def write_outputs(out: Path, model: nn.Module, name: str, data_config: Any, cfg: QuantConfig,
                  calib_set: Any, report: dict, recipe: dict, overwrite: bool,
                  export: bool = True) -> None:
    """All outputs into a temporary directory, renamed to `out` at the end (Ctrl-C safe).

    The ONNX export comes first: it prepares the model for fused integer kernels (output
    quantizers, bias grid), so `quantized.pt` is saved as the exact model `model.onnx` computes.
    """
    from dfq.calibration import save_calibration
    from dfq.calibration.io import atomic_path, write_json
    from dfq.config import write_yaml
    from dfq.quant.io import FILENAME, save_quantized

    with atomic_path(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        if export:
            from dfq.export import export_quantized

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


def quant_config(recipe: str | Path | None, data_config: Any,
                 overrides: dict[str, Any] | None = None) -> QuantConfig:
    """The recipe's `quant:` section (shipped recipe chosen by input size) with CLI overrides."""
    from dfq.config import recipe_section
    from dfq.synth.recipe import default_recipe

    return recipe_section(QuantConfig, "quant", recipe or default_recipe(data_config), overrides)


def load_calib(path: str | Path, data_config: Any, limit: int | None) -> Any:
    """A calibration set from `dfq synthesize` output or real images, checked against the model."""
    from dfq.calibration import CalibrationSet
    from dfq.data import load_images

    images = load_images(path, data_config, limit=limit)
    images.check_fits(data_config)
    x = images.normalize(images.x, data_config)
    y = images.y if images.y is not None else torch.full((len(x),), -1, dtype=torch.long)
    return CalibrationSet(x, y, {"data_config": data_config.to_dict(), "source": str(path)})


def run_quantize(model: nn.Module, name: str, data_config: Any, cfg: QuantConfig, out: str | Path,
                 calib: str | Path | None = None, synth_cfg: Any | None = None, seed: int = 0,
                 device: str = "cpu", overwrite: bool = False, progress: bool = True,
                 export: bool = True) -> dict[str, Any]:
    """Calibration set (given, or synthesized with the quantized model as adversarial student),
    `quantize_`, and every output written to `out`; returns the report."""
    from dfq.errors import DfqError

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
        calib_set, synth_seconds = _synthesize(model, data_config, cfg, synth_cfg, name, device, progress)
    report = quantize_(model, cfg, calib_set.images.to(device), teacher, progress, seed)
    if synth_seconds is not None:
        report["stages"] = {"synthesize": {"seconds": synth_seconds,
                                           "losses": calib_set.metadata.get("final_losses")},
                            **report["stages"]}
    report = {"command": "quantize", "model": name, "data_config": data_config.to_dict(),
              "seed": seed, "device": str(device),
              "versions": versions(), "config": resolved_recipe(cfg, None if calib else synth_cfg),
              "calibration": str(calib) if calib else "synthesized", **report,
              "total_seconds": round(time.perf_counter() - start, 3)}
    write_outputs(out, model.cpu(), name, data_config, cfg, calib_set, report,
                  resolved_recipe(cfg, None if calib else synth_cfg), overwrite, export)
    return report


def _synthesize(model: nn.Module, data_config: Any, cfg: QuantConfig, synth_cfg: Any, name: str,
                device: str, progress: bool) -> tuple[Any, float]:
    """Synthesis with a student quantized at range-init on Gaussian noise (no fine-tuning)."""
    from dfq.synth import synthesize

    start = time.perf_counter()
    student = copy.deepcopy(model)
    noise = torch.randn(min(64, synth_cfg.num_images), *data_config.input_size,
                        generator=torch.Generator().manual_seed(synth_cfg.seed)).to(device)
    prepare(student, cfg, [noise])
    calib_set = synthesize(model, synth_cfg, data_config, student=student, progress=progress,
                           device=device, model_name=name)
    return calib_set, round(time.perf_counter() - start, 3)
