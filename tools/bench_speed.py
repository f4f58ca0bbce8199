"""Speed of synthesis and fine-tuning on ImageNet-size models (issue 6), on a GPU or this CPU.

For torchvision resnet18, resnet50 and mobilenet_v2 at 224 (random weights: speed does not depend on
them) it measures synthesis image-steps/s, the model's FLOPs per image-step (forward + backward to
the input, counted by torch's FlopCounterMode), the achieved TFLOP/s against a measured matmul peak
(bf16 on CUDA, float32 on CPU), distillation steps/s, and optionally the end-to-end
`dfq quantize MODEL --bits 4` wall time with the default ImageNet recipe (`--e2e`, meant for a GPU).

    python tools/bench_speed.py                       # CPU: few iterations, to extrapolate
    python tools/bench_speed.py --iters 50 --batch 64 --e2e   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfq.models import load_model
from dfq.quant.pipeline import quantize_
from dfq.run.recipe import quant_config
from dfq.synth import SynthConfig, synthesize


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dev: str) -> float:
    """Measured dense matmul TFLOP/s: bf16 on CUDA, float32 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if dev == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    a @ b
    sync(dev)
    reps = 20 if dev == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def flops_per_image_step(model: torch.nn.Module, size: tuple[int, int, int]) -> float:
    """Forward + backward-to-input FLOPs of one image, as synthesis runs it (weights frozen)."""
    model.requires_grad_(False)
    x = torch.randn(2, *size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def synth_rate(model, cfg_data, dev: str, batch: int, iters: int) -> float:
    cfg = SynthConfig(num_images=batch, batch_size=batch, iters=iters, reinit_generator=True)
    synthesize(
        model,
        SynthConfig(num_images=batch, batch_size=batch, iters=2),
        cfg_data,
        progress=False,
        device=dev,
    )  # warm-up (cuDNN autotune, allocator)
    sync(dev)
    start = time.perf_counter()
    synthesize(model, cfg, cfg_data, progress=False, device=dev)
    sync(dev)
    return batch * iters / (time.perf_counter() - start)


def kd_rate(model, cfg_data, dev: str, batch: int, iters: int) -> float:
    cfg = quant_config(
        "imagenet",
        cfg_data,
        {
            "reconstruct": False,
            "kd_iters": iters,
            "kd_batch_size": batch,
            "calib_batch_size": batch,
        },
    )
    calib = torch.randn(batch * 2, *cfg_data.input_size, device=dev)
    report = quantize_(model.to(dev), cfg, calib, progress=False)
    return iters / report["stages"]["distill"]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="synthesis/KD batch [64 GPU, 4 CPU]")
    ap.add_argument("--iters", type=int, default=None, help="timed steps [50 GPU, 3 CPU]")
    ap.add_argument("--e2e", action="store_true", help="also time `dfq quantize MODEL --bits 4`")
    ap.add_argument("--out", default="runs/bench_speed")
    args = ap.parse_args()
    dev = args.device
    batch = args.batch or (64 if dev == "cuda" else 4)
    iters = args.iters or (50 if dev == "cuda" else 3)
    peak = matmul_peak(dev)
    rows = []
    for name in args.models.split(","):
        model, cfg = load_model(f"torchvision:{name}", pretrained=False)
        flops = flops_per_image_step(model, cfg.input_size)
        rate = synth_rate(model, cfg, dev, batch, iters)
        row = {
            "model": name,
            "synth_image_steps_per_s": round(rate, 2),
            "gflop_per_image_step": round(flops / 1e9, 2),
            "achieved_tflops": round(rate * flops / 1e12, 3),
            "peak_tflops": round(peak, 1),
            "fraction_of_peak": round(rate * flops / 1e12 / peak, 4),
            "kd_steps_per_s": round(kd_rate(model, cfg, dev, batch, iters), 3),
        }
        if args.e2e:
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dfq",
                    "quantize",
                    name,
                    "--no-pretrained",
                    "--bits",
                    "4",
                    "--out",
                    f"{args.out}/{name}-w4a4",
                    "--overwrite",
                ],
                check=True,
            )
            row["quantize_w4a4_seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name()
        if dev == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "batch": batch,
        "iters": iters,
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    cols = list(rows[0])
    table = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    table += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    (out / "results.md").write_text(f"{json.dumps(meta)}\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
