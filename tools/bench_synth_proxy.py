"""Data-free proxies of a synthesis recipe for a 224-pixel model (issue 13): no real image read.

Synthesizes a few batches with a recipe variant and reports what synthesis can see itself: whether
the teacher classifies the images as their target class (the class prior reached), its confidence,
the BN-statistics loss at full resolution, the total variation of the pixels (noise), and time.

    python tools/bench_synth_proxy.py --set bn_weight=0.01 --set lr_pixels=0.01
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dfq.config import read_yaml
from dfq.device import keep_freed_memory
from dfq.models import load_model
from dfq.quant.quant_config import QuantConfig
from dfq.run.quantized_student import quantized_student
from dfq.run.recipe import synth_config
from dfq.synth import synthesize
from dfq.synth.bn_stats import BNStatHooks
from dfq.synth.inversion import total_variation

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@torch.no_grad()
def proxies(model, calib) -> dict:
    with BNStatHooks(model) as bn:
        logits = model(calib.images)
        bn_loss = float(bn.loss())
    p = torch.softmax(logits, 1)
    return {
        "teacher_agrees_with_target": round(float((p.argmax(1) == calib.labels).float().mean()), 3),
        "teacher_confidence": round(float(p.amax(1).mean()), 3),
        "bn_loss_full_res": round(bn_loss, 1),
        "total_variation": round(float(total_variation(calib.images)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:tf_efficientnet_lite0")
    ap.add_argument("--weights", default=str(SHARED / "models/imagenet-efficientnet-lite0.pth"))
    ap.add_argument("--recipe", default="imagenet-cpu")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="runs/synth_proxy.jsonl")
    args = ap.parse_args()
    keep_freed_memory()
    model, dc = load_model(args.model, weights=args.weights)
    changes = {k: read_yaml(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = synth_config(args.recipe, dc, {"num_images": args.images, **changes}, device="cpu")
    student = quantized_student(model, QuantConfig(), dc, cfg.seed, "cpu")
    start = time.perf_counter()
    calib = synthesize(model, cfg, dc, student=student, progress=False, device="cpu")
    row = {
        "changes": changes,
        "seconds": round(time.perf_counter() - start, 1),
        **proxies(model, calib),
    }
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
