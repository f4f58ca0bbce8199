"""Measure the levers of the CPU recipe for 224-pixel models (issue 13); writes runs/cpu_recipe/.

For tf_efficientnet_lite0 on this machine: (1) synthesis cost per image-step at several
resolutions and parameterizations, with and without the adversarial student; (2) what a fixed
synthesis budget buys, judged without real images: the BatchNorm-statistics loss of the finished
images measured at the full 224 pixels (the quantity synthesis minimizes) and the teacher's
confidence; (3) the cost of a reconstruction step per block, and of a distillation step with the
teacher's logits cached (flip-only views) or recomputed, and with feature distillation, its
stage outputs cached too or the teacher run each step, at 224 pixels and on the smaller copies
`kd_low_res` distils on (160, 128). No image of imagenet-sample-1k is read.

    python tools/bench_cpu_recipe.py --budget 60 [--stages-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from dfq.device import keep_freed_memory
from dfq.models import load_model
from dfq.quant.data_source import FixedImages, low_res_view
from dfq.quant.distill import distill
from dfq.quant.feature_kd import feature_points
from dfq.quant.insert import prepare
from dfq.quant.pipeline import quantizers_disabled
from dfq.quant.reconstruct import reconstruct
from dfq.run.quantized_student import quantized_student
from dfq.run.recipe import quant_config, synth_config
from dfq.synth import synthesize
from dfq.synth.bn_stats import BNStatHooks

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = "timm:tf_efficientnet_lite0"
WEIGHTS = SHARED / "models" / "imagenet-efficientnet-lite0.pth"


@torch.no_grad()
def full_res_quality(model, images) -> dict:
    """BN-statistics loss at full resolution and mean teacher confidence of finished images."""
    with BNStatHooks(model) as bn:
        logits = model(images)
        loss = float(bn.loss())
    conf = float(torch.softmax(logits, 1).amax(1).mean())
    return {"bn_loss_224": round(loss, 3), "teacher_confidence": round(conf, 3)}


def synthesis_row(model, dc, cfg, student, label) -> dict:
    start = time.perf_counter()
    calib = synthesize(model, cfg, dc, student=student, progress=False, device="cpu")
    seconds = time.perf_counter() - start
    steps = cfg.num_images * cfg.iters
    row = {
        "setting": label,
        "images": cfg.num_images,
        "iters": cfg.iters,
        "seconds": round(seconds, 1),
        "image_steps_per_s": round(steps / seconds, 1),
        **full_res_quality(model, calib.images),
    }
    print(row, flush=True)
    return row


def synthesis_table(model, dc, qcfg, args) -> list[dict]:
    base = synth_config(
        "imagenet-cpu", dc, {"num_images": 32, "batch_size": 32, "student_steps": 0}, device="cpu"
    )
    student = quantized_student(model, qcfg, dc, 0, "cpu")
    rows = []
    # a fixed budget: iterations chosen so each setting gets about `budget` seconds
    for label, changes, rate in [
        ("224 pixels", {"low_res": 0, "full_res_iters": 0}, 12.0),
        ("160 then 224", {"low_res": 160, "full_res_iters": 5}, 40.0),
        ("128 then 224", {"low_res": 128, "full_res_iters": 5}, 70.0),
        ("112 then 224", {"low_res": 112, "full_res_iters": 5}, 90.0),
        ("96 then 224", {"low_res": 96, "full_res_iters": 5}, 120.0),
    ]:
        iters = max(10, int(args.budget * rate / base.num_images))
        cfg = replace(base, iters=iters, **changes)
        rows.append(synthesis_row(model, dc, cfg, student, f"pixels, {label}"))
    cfg = replace(
        base,
        iters=max(10, int(args.budget * 90.0 / base.num_images)),
        low_res=112,
        full_res_iters=5,
    )
    rows.append(
        synthesis_row(
            model,
            dc,
            replace(cfg, adv_weight=0.0),
            None,
            "pixels, 112 then 224, no adversarial student",
        )
    )
    rows.append(
        synthesis_row(
            model, dc, replace(cfg, param="generator"), student, "generator, 112 then 224"
        )
    )
    return rows


def stage_costs(model, dc, qcfg) -> dict:
    """Seconds per reconstruction step (all blocks) and per distillation step."""
    images = torch.randn(64, *dc.input_size)
    q = copy.deepcopy(model)
    prepare(q, qcfg, list(images.split(32)))
    out = {}
    cfg = replace(qcfg, recon_iters=4, log_every=1000)
    fp = copy.deepcopy(q)
    start = time.perf_counter()
    with quantizers_disabled(fp):
        reconstruct(q, fp, images, cfg, progress=False)
    out["reconstruct_s_per_iter_all_blocks"] = round((time.perf_counter() - start) / 4, 2)
    points = feature_points(model, dc.input_size)
    for label, augment, weight, stage_names, side in [
        ("shift_flip", "shift_flip", 0.0, [], 0),
        ("flip", "flip", 0.0, [], 0),
        ("flip_features_cached", "flip", 1.0, points, 0),
        ("flip_features_teacher_each_step", "flip", 1.0, [], 0),
        ("flip_features_cached_160px", "flip", 1.0, points, 160),
        ("flip_features_cached_128px", "flip", 1.0, points, 128),
    ]:
        cfg = replace(
            qcfg, kd_iters=4, kd_augment=augment, kd_feature_weight=weight, log_every=1000
        )
        view = low_res_view(images, side) if side else images  # kd_low_res's copy
        start = time.perf_counter()
        source = FixedImages(view, model, augment, 0, cfg.kd_batch_size, stage_names=stage_names)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        distill(q, model, source, cfg, progress=False)
        out[f"distill_{label}_s_per_step"] = round((time.perf_counter() - start) / 4, 2)
        out[f"distill_{label}_setup_s_per_64_images"] = round(setup, 2)
    print(out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per synthesis setting")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/cpu_recipe")
    ap.add_argument("--stages-only", action="store_true", help="skip the synthesis table")
    args = ap.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, dc = load_model(MODEL, weights=WEIGHTS)
    qcfg = quant_config("imagenet-cpu", dc, {}, device="cpu")
    result = {
        "threads": torch.get_num_threads(),
        "synthesis": [] if args.stages_only else synthesis_table(model, dc, qcfg, args),
        "stages": stage_costs(model, dc, qcfg),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
