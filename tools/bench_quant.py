"""Benchmark `dfq quantize` on the CIFAR-10 ResNets (issue 4 acceptance); writes runs/bench_quant/.

Each experiment quantizes a fresh copy of the FP model and evaluates it on jpeg-10k and
lossless-846. The data-free experiments share one synthetic calibration set per model, made by the
default pipeline (`run_quantize`, W4A4, which is also the end-to-end timing); baselines and
ablations change one thing.

    flock /tmp/dfq-bench.lock python tools/bench_quant.py --models cifar10_resnet20 --only w4a4,w8a8
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from dfq.calibration import load_calibration
from dfq.data import load_images
from dfq.evaluate import evaluate
from dfq.models import load_model
from dfq.quant.pipeline import quantize_
from dfq.run.quantize_run import run_quantize
from dfq.run.recipe import quant_config, synth_config
from dfq.synth import synthesize

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = {"cifar10_resnet20": "cifar10-resnet20.th", "cifar10_resnet56": "cifar10-resnet56.th"}
TESTS = {"jpeg10k": "cifar10-test-jpeg.npz", "lossless846": "cifar10-test-lossless-846.npz"}
# name -> (quant overrides, calibration kind, note)
EXPERIMENTS = {
    "w4a4": ({}, "synth", "data-free, default protocol (first/last 8 bit), end-to-end timed"),
    "w8a8": ({"wbits": 8, "abits": 8}, "synth", "data-free"),
    "w4a4-same": ({"first_last_bits": "same"}, "synth", "all layers 4 bit (IntraQ protocol)"),
    "w3a3-same": ({"wbits": 3, "abits": 3, "first_last_bits": "same"}, "synth", "all layers 3 bit"),
    "noise-noft": (
        {"reconstruct": False, "kd_iters": 0},
        "noise",
        "baseline: Gaussian calib, no FT",
    ),
    "bn-noft": (
        {"reconstruct": False, "kd_iters": 0},
        "bn",
        "baseline: BN-statistics synth, no FT",
    ),
    "real-ft": ({}, "real", "real 5k-train images, full fine-tuning (ceiling)"),
    "no-relation": ({"relation_weight": 0.0}, "synth-norel", "ablation: relation losses off"),
    "no-recon": ({"reconstruct": False}, "synth", "ablation: block reconstruction off"),
    "w4a4-same-long": (
        {"first_last_bits": "same", "recon_iters": 600, "kd_iters": 600},
        "synth",
        "all layers 4 bit, twice the fine-tuning iterations",
    ),
    "w4a4-same-all": (
        {"first_last_bits": "same", "kd_params": "all"},
        "synth",
        "all layers 4 bit, distillation also updates weights (STE)",
    ),
}


def fp_model(name):
    return load_model(name, weights=SHARED / "models" / WEIGHTS[name])


def accuracy(model, dc, tests):
    return {k: evaluate(model, v, dc, show_progress=False)["top1"] for k, v in tests.items()}


def calibration(kind, name, dc, n, out_dir, seed, cache):
    """Normalized calibration images for one kind (cached per model)."""
    if kind in cache:
        return cache[kind]
    model, _ = fp_model(name)
    scfg = synth_config(None, dc, {"num_images": n, "seed": seed})
    if kind == "noise":
        x = torch.randn(n, *dc.input_size, generator=torch.Generator().manual_seed(seed))
    elif kind == "real":
        imgs = load_images(SHARED / "data" / "cifar10-train-jpeg-5k.npz", dc)
        idx = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(seed))[:n]
        x = imgs.normalize(imgs.x[idx], dc)
    elif kind == "bn":  # ZeroQ-like: pixels, BN statistics + class prior only, no student
        x = synthesize(
            model,
            replace(scfg, method="pixels", relation=False, adv_weight=0.0),
            dc,
            progress=False,
        ).images
    elif kind == "synth-norel":
        x = synthesize(model, replace(scfg, relation=False), dc, progress=False).images
    else:
        raise KeyError(kind)
    cache[kind] = x
    return x


def run_model(name, only, args, results, out_dir):
    model, dc = fp_model(name)
    tests = {k: load_images(SHARED / "data" / f, dc) for k, f in TESTS.items()}
    results[name] = res = results.get(name, {})
    res["fp"] = accuracy(model, dc, tests)
    print(name, "fp", res["fp"], flush=True)
    cache: dict = {}
    base = quant_config(None, dc, {})
    e2e = out_dir / f"{name}-w4a4"
    needs_synth = any(EXPERIMENTS[e][1] == "synth" for e in only)
    if "w4a4" not in only and needs_synth and (e2e / "calibration.npz").exists():
        # reuse the synthetic set of an earlier w4a4 run of this model (same seed and recipe)
        cache["synth"] = load_calibration(e2e / "calibration.npz").images
        print(name, "reusing", e2e / "calibration.npz", flush=True)
    elif "w4a4" in only or needs_synth:
        start = time.perf_counter()
        scfg = synth_config(None, dc, {"num_images": args.num_images, "seed": args.seed})
        report = run_quantize(
            model,
            name,
            dc,
            base,
            e2e,
            synth_cfg=scfg,
            seed=args.seed,
            overwrite=True,
            progress=False,
        )
        wall = time.perf_counter() - start
        cache["synth"] = load_calibration(e2e / "calibration.npz").images
        res["w4a4"] = {
            "acc": accuracy(model, dc, tests),
            "seconds_end_to_end": round(wall, 1),
            "stages": {k: v["seconds"] for k, v in report["stages"].items()},
            "note": EXPERIMENTS["w4a4"][2],
        }
        _save(results, out_dir)
        print(name, "w4a4", res["w4a4"], flush=True)
    for exp in only:
        if exp == "w4a4":
            continue
        over, kind, note = EXPERIMENTS[exp]
        calib = calibration(kind, name, dc, args.num_images, out_dir, args.seed, cache)
        cfg = replace(base, **over)
        m, _ = fp_model(name)
        start = time.perf_counter()
        report = quantize_(m, cfg, calib, progress=False, seed=args.seed)
        res[exp] = {
            "acc": accuracy(m, dc, tests),
            "seconds_quantize": round(time.perf_counter() - start, 1),
            "calibration": kind,
            "note": note,
            "kd_loss_final": report["stages"]["bake"]["kd_loss"],
        }
        _save(results, out_dir)
        print(name, exp, res[exp], flush=True)


def _save(results, out_dir):
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| model | experiment | jpeg-10k | drop | lossless-846 | drop | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        fp = res.get("fp", {})
        for exp, r in res.items():
            acc = r if exp == "fp" else r["acc"]
            d = {k: (round(fp[k] - acc[k], 2) if exp != "fp" else "") for k in TESTS}
            lines.append(
                f"| {name} | {exp} | {acc['jpeg10k']:.2f} | {d['jpeg10k']} | "
                f"{acc['lossless846']:.2f} | {d['lossless846']} | "
                f"{'' if exp == 'fp' else r['note']} |"
            )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cifar10_resnet20,cifar10_resnet56")
    ap.add_argument(
        "--only", default=",".join(EXPERIMENTS), help=f"subset of {', '.join(EXPERIMENTS)}"
    )
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 when the CPU is shared)"
    )
    ap.add_argument("--out", default="runs/bench_quant")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    only = [e.strip() for e in args.only.split(",") if e.strip()]
    unknown = [e for e in only if e not in EXPERIMENTS]
    if unknown:
        ap.error(f"unknown experiments {unknown}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.models.split(","):
        run_model(name.strip(), only, args, results, out_dir)


if __name__ == "__main__":
    main()
