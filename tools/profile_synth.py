"""Where a synthesis step's time goes: steps per second at several batch sizes, and the top ops.

Runs `dfq.synth.synthesize` as `dfq quantize` does (the shipped recipe for the device, a quantized
student made from the model) for a few steps of one batch per batch size, after one warm-up run,
and prints steps/s and images x steps/s. With `--profile`, one more run at the first batch size
under torch.profiler, its ops sorted by device time (CUDA) or CPU time, into OUT/profile.txt.

    python tools/profile_synth.py --model timm:tf_efficientnet_lite0 \\
        --weights ../shared/models/imagenet-efficientnet-lite0.pth --batch-sizes 32,64,128 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from recipe_args import add_recipe_changes, recipe_changes

from dfq.device import resolve_device
from dfq.models import load_model
from dfq.run.quantized_student import quantized_student
from dfq.run.recipe import quant_config, recipe_choice, synth_config
from dfq.synth import synthesize


def one_batch(base, batch: int, steps: int):
    """The recipe cut to one round of `batch` images and `steps` steps, without retries."""
    return replace(base, num_images=batch, batch_size=batch, iters=steps, max_retries=0)


def run_synthesis(model, cfg, dc, qcfg, device: str, around=contextlib.nullcontext):
    """`synthesize` as `dfq quantize` calls it (student made first, outside `around`); the
    seconds spent inside `around()`, the device synchronized at both ends."""
    student = quantized_student(model, qcfg, dc, cfg.seed, device)
    with around():
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        synthesize(model, cfg, dc, student=student, progress=False, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def profile_table(model, cfg, dc, qcfg, device: str, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    prof = profile(activities=acts)
    run_synthesis(model, cfg, dc, qcfg, device, lambda: prof)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--steps", type=int, default=50, help="synthesis steps per timed run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    add_recipe_changes(ap, "synth", "every run")
    ap.add_argument("--out", default="runs/profile_synth")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, dc = load_model(args.model, weights=args.weights)
    choice = recipe_choice(dc, device)
    base = synth_config(None, dc, recipe_changes(args.synth), device=device)
    qcfg = quant_config(None, dc, device=device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    results = {"model": args.model, "device": device, "recipe": choice["recipe"], "runs": []}
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    for i, b in enumerate(sizes):
        if i == 0:  # warm-up: kernels chosen, memory pools filled
            run_synthesis(model, one_batch(base, b, min(5, args.steps)), dc, qcfg, device)
        sec = run_synthesis(model, one_batch(base, b, args.steps), dc, qcfg, device)
        run = {
            "batch_size": b,
            "steps": args.steps,
            "seconds": round(sec, 3),
            "ms_per_step": round(1000 * sec / args.steps, 2),
            "image_steps_per_s": round(b * args.steps / sec, 1),
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.profile:
        cfg = one_batch(base, sizes[0], args.steps)
        table = profile_table(model, cfg, dc, qcfg, device, args.rows)
        (out / "profile.txt").write_text(table)
        print(table)


if __name__ == "__main__":
    main()
