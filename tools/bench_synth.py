"""Acceptance benchmark for issue 3: synthetic calibration vs real and noise, ablation, cost.

    flock /tmp/dfq-bench.lock python tools/bench_synth.py --part quantizer --models cifar10_resnet20

Parts: `quantizer` (FP ONNX -> onnxruntime quantize_static QDQ S8S8 per-channel, and W8A4 with
MinMax ranges, calibrated with 512 images from dfq synthesize / real training images / Gaussian
noise; top-1 on jpeg-10k and lossless-846), `ablation` (BN-only, BN + class prior, full RGAL;
generator vs pixels), `cost` (wall time and images/s). Writes `runs/bench_synth/<part>.md` and
`.json`. The training split is read only as baseline (b).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from recipe_args import add_recipe_changes, recipe_changes

from dfq.calibration import CalibrationReader, CalibrationSet
from dfq.calibration.formats import load_calibration, save_calibration
from dfq.data import ImageSet, load_images
from dfq.evaluate import evaluate
from dfq.export.runtime import onnx_predictor, open_session, session_options
from dfq.models import load_model
from dfq.quant.quant_config import QuantConfig
from dfq.run.quantized_student import quantized_student
from dfq.run.recipe import synth_config
from dfq.synth import synthesize
from dfq.synth.bn_stats import BNStatHooks
from dfq.synth.features import penultimate_features

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = {"cifar10_resnet20": "cifar10-resnet20.th", "cifar10_resnet56": "cifar10-resnet56.th"}
TESTS = {"jpeg-10k": "cifar10-test-jpeg.npz", "lossless-846": "cifar10-test-lossless-846.npz"}
REAL = "cifar10-train-jpeg-5k.npz"


def load(name: str):
    return load_model(name, weights=SHARED / "models" / WEIGHTS[name])


def export_fp(model, cfg, path: Path) -> Path:
    """FP ONNX, opset 13, dynamic batch (dfq.export will replace this)."""
    dummy = torch.randn(1, *cfg.input_size)
    torch.onnx.export(
        model.eval(),
        dummy,
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=13,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        dynamo=False,
    )
    return path


# onnxruntime quantize_static schemes: the S8S8, and 4-bit activations with MinMax ranges,
# where the calibration set's activation extremes decide the grids (onnxruntime has no fused 4-bit
# kernels, so that one runs with graph optimizations off: Q/DQ and float convs).
SCHEMES = {"S8S8": ("QInt8", True), "W8A4-minmax": ("QUInt4", False)}


def ort_quantize(fp: Path, out: Path, calib: CalibrationSet, scheme: str = "S8S8") -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    act = getattr(QuantType, SCHEMES[scheme][0])
    quantize_static(
        str(fp),
        str(out),
        CalibrationReader(calib, "input", batch_size=64),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=act,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def ort_top1(path: Path, cfg, tests: dict, optimize: bool = True) -> dict:
    opts = session_options(torch.get_num_threads(), optimize=optimize)
    predict = onnx_predictor(open_session(path, ["CPUExecutionProvider"], opts))
    return {
        k: evaluate(predict, v, cfg, batch_size=500, show_progress=False)["top1"]
        for k, v in tests.items()
    }


def set_path(out: Path, model: str, method: str, tag: str, seed: int) -> Path:
    """Where the quantizer part saves a synthesized set and the ranges part looks for it."""
    return out / "sets" / f"{model}-{method}{tag}-s{seed}.npz"


def real_indices(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Baseline (b)'s draw: n training images, class-balanced, at random."""
    g = np.random.default_rng(seed)
    per = n // num_classes
    idx = np.concatenate(
        [g.choice(np.flatnonzero(y == c), per, replace=False) for c in range(num_classes)]
    )
    rest = np.setdiff1d(np.arange(len(y)), idx)
    return np.concatenate([idx, g.choice(rest, n - len(idx), False)])


def real_calib(cfg, n: int, seed: int) -> CalibrationSet:
    """Baseline (b): n training images, class-balanced random draw."""
    real = load_images(SHARED / "data" / REAL, cfg)
    idx = real_indices(real.y.numpy(), n, cfg.num_classes, seed)
    x = real.normalize(real.x[idx], cfg)
    return CalibrationSet(x, real.y[idx], {"data_config": cfg.to_dict(), "source": REAL})


def selection_split(cfg, n: int) -> ImageSet:
    """`--select`: the train-5k images that baseline (b) does not calibrate with, for choosing
    synthesis settings without the test sets."""
    real = load_images(SHARED / "data" / REAL, cfg)
    keep = np.setdiff1d(np.arange(len(real)), real_indices(real.y.numpy(), n, cfg.num_classes, 0))
    return ImageSet(real.x[keep], real.y[keep], real.normalized, REAL + " (held out of (b))")


def noise_calib(cfg, n: int, seed: int) -> CalibrationSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *cfg.input_size, generator=g)
    return CalibrationSet(x, torch.zeros(n, dtype=torch.long), {"data_config": cfg.to_dict()})


def set_stats(model, calib: CalibrationSet, margin: float) -> dict:
    """BN loss (whole set at once), intra-class diversity, share of low top-2-margin samples."""
    with torch.no_grad(), BNStatHooks(model) as bn, penultimate_features(model) as feats:
        logits = model(calib.images)
        bn_loss = float(bn.loss())
    z = F.normalize(feats["features"], dim=1)
    d = torch.cdist(z, z)
    same = (calib.labels[:, None] == calib.labels[None, :]) & ~torch.eye(len(z), dtype=torch.bool)
    top2 = logits.softmax(1).topk(2, dim=1).values
    return {
        "bn_loss": round(bn_loss, 3),
        "intra_div": round(float(d[same].mean()), 4),
        "confusion": round(float(((top2[:, 0] - top2[:, 1]) < margin).float().mean()), 4),
        "teacher_agrees": round(float((logits.argmax(1) == calib.labels).float().mean()), 4),
    }


def _student(model, cfg, seed, args):
    """The student dfq synthesize gives the methods that use one: the model at W4A4."""
    return quantized_student(model, QuantConfig(wbits=4, abits=4), cfg, seed, args.device)


def part_quantizer(args, out: Path) -> list[dict]:
    rows = []
    for name in args.models:
        model, cfg = load(name)
        tests = {k: load_images(SHARED / "data" / f, cfg) for k, f in TESTS.items()}
        if args.select:
            tests["train-5k-heldout"] = selection_split(cfg, args.num_images)
        fp = export_fp(model, cfg, out / f"{name}.fp.onnx")
        fp_acc = ort_top1(fp, cfg, tests)
        rows.append(
            {
                "model": name,
                "calib": "none (FP)",
                **{f"{s} {k}": v for s in args.schemes for k, v in fp_acc.items()},
            }
        )
        sources = {}
        for method in args.methods:
            for seed in args.seeds:
                changes = {
                    "num_images": args.num_images,
                    "seed": seed,
                    "method": method,
                    **args.synth_changes,
                }
                if args.iters:
                    changes["iters"] = args.iters
                scfg = synth_config(args.recipe, cfg, changes, device=args.device)
                start = time.perf_counter()
                synth = synthesize(
                    model,
                    scfg,
                    cfg,
                    student=_student(model, cfg, seed, args),
                    progress=args.progress,
                    model_name=name,
                    device=args.device,
                )
                synth.metadata["wall"] = time.perf_counter() - start
                save_calibration(synth, set_path(out, name, method, args.tag, seed), overwrite=True)
                sources[f"(a) {method}{args.tag}, seed {seed}"] = synth
        sources.update(
            {
                "(b) real train-5k": real_calib(cfg, args.num_images, 0),
                "(c) gaussian noise": noise_calib(cfg, args.num_images, 0),
            }
        )
        for label, calib in sources.items():
            row = {"model": name, "calib": label}
            for scheme in args.schemes:
                q = ort_quantize(fp, out / f"{name}.calib.{scheme}.onnx", calib, scheme)
                acc = ort_top1(q, cfg, tests, optimize=SCHEMES[scheme][1])
                row.update({f"{scheme} {k}": v for k, v in acc.items()})
            row.update(set_stats(model, calib, 0.5))
            if "wall" in calib.metadata:
                row.update(
                    synth_seconds=round(calib.metadata["wall"], 1),
                    method=calib.metadata["method"],
                    seed=calib.metadata["seed"],
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


ABLATION = {
    "BN only": dict(ce_weight=0.0, relation=False),
    "BN + class prior": dict(relation=False),
    "full RGAL (swapped)": dict(relation=True),
    "full RGAL (standard)": dict(relation=True, relation_direction="standard"),
}


def part_ablation(args, out: Path) -> list[dict]:
    rows = []
    name = args.models[0]
    model, cfg = load(name)
    tests = {"jpeg-10k": load_images(SHARED / "data" / TESTS["jpeg-10k"], cfg)}
    fp = export_fp(model, cfg, out / f"{name}.fp.onnx")
    for param in ("generator", "pixels"):
        for label, over in ABLATION.items():
            scfg = synth_config(
                args.recipe,
                cfg,
                {
                    "num_images": args.num_images,
                    "iters": args.iters,
                    "seed": args.seeds[0],
                    "param": param,
                    **over,
                },
            )
            start = time.perf_counter()
            calib = synthesize(model, scfg, cfg, progress=args.progress, model_name=name)
            wall = time.perf_counter() - start
            q = ort_quantize(fp, out / f"{name}.abl.int8.onnx", calib)
            row = {
                "model": name,
                "param": param,
                "losses": label,
                "seconds": round(wall, 1),
                "final_bn_loss_synth": calib.metadata["final_losses"]["bn"],
                **set_stats(model, calib, 0.5),
                "(a) top1 jpeg-10k": ort_top1(q, cfg, tests)["jpeg-10k"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


@torch.no_grad()
@torch.no_grad()
def layer_inputs(model, images: torch.Tensor, types: tuple[type, ...]) -> dict[str, torch.Tensor]:
    """Per module of `types`, its input over all of `images` (forward in batches of 64)."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        m.register_forward_pre_hook(lambda _m, inp, n=n: seen.setdefault(n, []).append(inp[0]))
        for n, m in model.named_modules()
        if isinstance(m, types)
    ]
    for x in images.split(64):
        model(x)
    for h in handles:
        h.remove()
    return {n: torch.cat(parts) for n, parts in seen.items()}


def conv_input_ranges(model, images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per conv / linear: the largest input value over the set (what MinMax calibration takes),
    and the 99.99th percentile (what one outlying image cannot move)."""
    out = {}
    for name, v in layer_inputs(model, images, (torch.nn.Conv2d, torch.nn.Linear)).items():
        v = v.flatten()
        sample = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        out[name] = (float(v.max()), float(torch.quantile(sample, 0.9999)))
    return out


@torch.no_grad()
def bn_tails(model, images: torch.Tensor, z: float = 4.0) -> tuple[float, float]:
    """Median over BN layers of (input variance / running variance, channels' median) and of the
    share of BN inputs beyond `z` running standard deviations, per 10,000."""
    bns = dict(model.named_modules())
    ratios, shares = [], []
    for n, v in layer_inputs(model, images, (torch.nn.BatchNorm2d,)).items():
        m = bns[n]
        shape = (1, -1, 1, 1)
        ratios.append(float((v.var(dim=(0, 2, 3)) / m.running_var).median()))
        dev = (v - m.running_mean.view(shape)).abs() / m.running_var.sqrt().view(shape)
        shares.append(float((dev > z).float().mean()) * 1e4)
    return float(np.median(ratios)), float(np.median(shares))


def part_ranges(args, out: Path) -> list[dict]:
    """Why MinMax 4-bit activations score differently: per-layer maxima of each calibration set
    against the real images', and how far each layer's maximum lies beyond its 99.99th
    percentile. A set the quantizer part saved under the same --out and --tag is reused."""
    rows = []
    for name in args.models:
        model, cfg = load(name)
        real = real_calib(cfg, args.num_images, 0)
        ref = conv_input_ranges(model, real.images)
        sets = {"real train-5k": real, "gaussian noise": noise_calib(cfg, args.num_images, 0)}
        for method in args.methods:
            seed = args.seeds[0]
            saved = set_path(out, name, method, args.tag, seed)
            if saved.exists():  # the quantizer part's set, same --out, --synth and --tag
                sets[method + args.tag] = load_calibration(saved)
                continue
            changes = {"num_images": args.num_images, "seed": seed, "method": method}
            scfg = synth_config(
                args.recipe, cfg, {**changes, **args.synth_changes}, device=args.device
            )
            sets[method + args.tag] = synthesize(
                model,
                scfg,
                cfg,
                student=_student(model, cfg, seed, args),
                progress=args.progress,
                device=args.device,
            )
        for label, calib in sets.items():
            r = conv_input_ranges(model, calib.images)
            ratios = [r[k][0] / max(ref[k][0], 1e-8) for k in ref]
            tails = [r[k][0] / max(r[k][1], 1e-8) for k in ref]
            var_ratio, beyond = bn_tails(model, calib.images)
            rows.append(
                {
                    "model": name,
                    "calibration": label,
                    "median max / real max": round(float(np.median(ratios)), 3),
                    "layers with max > 1.5x real": int(sum(x > 1.5 for x in ratios)),
                    "worst max / real max": round(max(ratios), 2),
                    "median max / own 99.99th pct": round(float(np.median(tails)), 2),
                    "median BN var / running var": round(var_ratio, 3),
                    "median BN inputs > 4 std per 1e4": round(beyond, 1),
                    "layers": len(ref),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def part_cost(args, out: Path) -> list[dict]:
    """Per-step cost at 224 (torchvision resnet18, random weights: cost does not depend on them)."""
    rows = []
    model, cfg = load_model("torchvision:resnet18", pretrained=False)
    full = synth_config("imagenet", cfg)
    for param in ("generator", "pixels"):
        scfg = synth_config(
            "imagenet",
            cfg,
            {"num_images": full.batch_size, "iters": args.cost_iters, "param": param},
        )
        start = time.perf_counter()
        synthesize(model, scfg, cfg, progress=args.progress, model_name="resnet18")
        per_step = (time.perf_counter() - start) / scfg.iters
        steps = -(-full.num_images // full.batch_size) * full.iters
        rows.append(
            {
                "model": "torchvision:resnet18",
                "param": param,
                "batch": scfg.batch_size,
                "iters_measured": scfg.iters,
                "s_per_step": round(per_step, 2),
                "extrapolated_recipe_hours": round(per_step * steps / 3600, 2),
                "recipe": f"{full.num_images} images x {full.iters} iters",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["quantizer", "ablation", "cost", "ranges"], action="append")
    ap.add_argument("--models", default="cifar10_resnet20,cifar10_resnet56")
    ap.add_argument("--recipe", default="cifar")
    ap.add_argument("--num-images", type=int, default=512)
    ap.add_argument("--iters", type=int, default=None, help="override the recipe's iters")
    ap.add_argument("--cost-iters", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="synthesis seeds, e.g. 0,1,2")
    ap.add_argument("--methods", default="rgal", help="synthesis methods, e.g. bn,rgal,dfad,rdskd")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest when shared)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--device",
        default="cpu",
        help="where the quantizer part synthesizes (cpu, cuda, auto): the same seed and "
        "recipe on CPU and GPU should give the same (a) accuracy within noise",
    )
    ap.add_argument(
        "--schemes",
        default="S8S8,W8A4-minmax",
        help=f"quantize_static schemes of the quantizer part: {', '.join(SCHEMES)}",
    )
    add_recipe_changes(ap, "synth", "every synthesized set")
    ap.add_argument("--tag", default="", help="suffix of the synthesized sets' labels")
    ap.add_argument(
        "--select",
        action="store_true",
        help="quantizer part: also score on the train-5k images (b) does not use (for choices)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_synth")
    args = ap.parse_args()
    args.synth_changes = recipe_changes(args.synth)
    args.models = args.models.split(",")
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.methods = args.methods.split(",")
    args.schemes = args.schemes.split(",")
    if set(args.schemes) - set(SCHEMES):
        ap.error(f"unknown schemes {sorted(set(args.schemes) - set(SCHEMES))}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    parts = {
        "quantizer": part_quantizer,
        "ablation": part_ablation,
        "cost": part_cost,
        "ranges": part_ranges,
    }
    for part in args.part or ["quantizer", "ablation", "cost"]:
        rows = parts[part](args, args.out)
        (args.out / f"{part}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
        md = f"# {part}\n\n{json.dumps(env)}\n\n{to_markdown(rows)}"
        (args.out / f"{part}.md").write_text(md)
        print(to_markdown(rows))


if __name__ == "__main__":
    main()
