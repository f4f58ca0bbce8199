"""What readying a quantized model for onnxruntime's integer kernels costs it; runs/export_cost/.

`dfq quantize` fine-tunes the model, then (at export) caps the ranges of quantizers that read a
ReLU6 at 6, gives the convolutions that onnxruntime could not fuse an 8-bit output quantizer and
snaps every bias to its int32 grid (`dfq.export.fusion`); the saved model, its accuracy and
`model.onnx` are the model after all three.
This quantizes a model on a saved synthetic set with `quantize_`, then scores it after each of the
two steps: agreement with FP and the distillation loss on a held-out synthetic set (what choices
may be made on), and the real-image top-1 (report only).

    python tools/export_cost.py --set runs/lite0_w8sel/sets/synth-default-s0.pt \
        --heldout runs/bench_lite0/sets/synth-bn-s0.pt --quant wbits=8 --quant abits=8
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from bench_quant import WEIGHTS, accuracy, fp_model, heldout_set, test_sets
from recipe_args import add_recipe_changes, recipe_changes

from dfq.device import keep_freed_memory
from dfq.export.clips import cap_clipped_ranges
from dfq.export.fusion import OUTPUT_INIT, attach_output_quantizers, snap_biases
from dfq.quant.distill import mean_kd_loss
from dfq.quant.pipeline import quantize_
from dfq.run.quantize_run import EXPORT_CHECK_IMAGES
from dfq.run.recipe import quant_config


def scores(model, name, dc, tests, cfg) -> dict:
    fp, _ = fp_model(name)
    kd = mean_kd_loss(model, fp, tests["synth-heldout"].x, cfg.kd_temperature)
    return {**accuracy(model, dc, tests), "heldout_kd_loss": round(kd, 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:tf_efficientnet_lite0", choices=sorted(WEIGHTS))
    ap.add_argument("--set", required=True, help="calibration set (.pt, normalized images)")
    ap.add_argument("--heldout", required=True, help="held-out synthetic set (.pt)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="name of this run in the results")
    ap.add_argument(
        "--output-init",
        default=OUTPUT_INIT,
        help="range inits of the output quantizers to compare, comma-separated (mse, minmax, "
        f"percentile; the exporter's: {OUTPUT_INIT})",
    )
    add_recipe_changes(ap, "quant", "the run")
    ap.add_argument("--out", default="runs/export_cost")
    args = ap.parse_args()
    keep_freed_memory()
    model, dc = fp_model(args.model)
    tests = test_sets(args.model, dc, select=False)
    tests["synth-heldout"] = heldout_set(model, Path(args.heldout))
    cfg = quant_config(None, dc, recipe_changes(args.quant), device="cpu")
    calib = torch.load(args.set, weights_only=True).float()
    rows = {"fp": accuracy(model, dc, tests)}
    start = time.perf_counter()
    quantize_(model, cfg, calib, progress=False, seed=args.seed)
    rows["quantized"] = scores(model, args.model, dc, tests, cfg)
    print("quantized", rows["quantized"], f"{time.perf_counter() - start:.0f} s", flush=True)
    export_calib = calib[:EXPORT_CHECK_IMAGES]
    size = tuple(dc.input_size)
    for init in args.output_init.split(","):
        ready = copy.deepcopy(model)
        capped = cap_clipped_ranges(ready, size)
        added = attach_output_quantizers(ready, export_calib, size, init=init)
        row = {**scores(ready, args.model, dc, tests, cfg), "added": added, "capped": capped}
        rows[f"output quantizers ({init})"] = row
        print(f"output quantizers ({init})", row, flush=True)
        snap_biases(ready, size)
        rows[f"biases snapped ({init})"] = scores(ready, args.model, dc, tests, cfg)
        print(f"biases snapped ({init})", rows[f"biases snapped ({init})"], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    key = f"{args.model} {' '.join(args.quant)}{args.tag}"
    results[key] = {"set": args.set, "seed": args.seed, "rows": rows}
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
