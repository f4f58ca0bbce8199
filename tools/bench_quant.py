"""Benchmark `dfq quantize`: accuracy drops against FP, per experiment and seed; runs/bench_quant/.

Each experiment quantizes a fresh copy of the FP model with the shipped recipe for the device (plus
the experiment's changes) and evaluates it. CIFAR-10 models are scored on jpeg-10k and
lossless-846 (and, with `--select`, on the train-5k split recipes are chosen on); ImageNet models
on imagenet-sample-1k, also split into its even- and odd-indexed classes so that the real-image
reference (calibrate and fine-tune on one half, score on the other, both ways: `real-xfit`) and
the data-free rows are scored on the same images. Data-free rows of one seed and method share one
synthetic set (made with the run's quantized student, as `dfq quantize` makes it). `e2e` rows
run the whole `run_quantize` (synthesis, quantization, export, pictures) and record stage times.

    python tools/bench_quant.py --model cifar10_resnet20 --only e2e-w4a4,w8a8 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from recipe_args import add_recipe_changes, recipe_changes

from dfq.data import load_images
from dfq.data.images import ImageSet
from dfq.device import keep_freed_memory
from dfq.errors import DfqFailure
from dfq.evaluate import evaluate
from dfq.models import load_model
from dfq.quant.distill import mean_kd_loss
from dfq.quant.pipeline import quantize_
from dfq.run.quantize_run import run_quantize
from dfq.run.quantized_student import quantized_student
from dfq.run.recipe import quant_config, recipe_choice, synth_config
from dfq.synth import synthesize

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = {
    "cifar10_resnet20": "cifar10-resnet20.th",
    "cifar10_resnet56": "cifar10-resnet56.th",
    "timm:tf_efficientnet_lite0": "imagenet-efficientnet-lite0.pth",
}
CIFAR_TESTS = {"jpeg10k": "cifar10-test-jpeg.npz", "lossless846": "cifar10-test-lossless-846.npz"}
SELECT = {"train5k": "cifar10-train-jpeg-5k.npz"}
IMAGENET = "imagenet-sample-1k"
NO_FT = {"reconstruct": False, "kd_iters": 0}
# name -> (quant changes, synth changes, calibration kind, note)
EXPERIMENTS = {
    "e2e-w4a4": ({}, {}, "e2e", "whole dfq quantize --bits 4, timed"),
    "e2e-w8a8": ({"wbits": 8, "abits": 8}, {}, "e2e", "whole dfq quantize --bits 8, timed"),
    "w4a4": ({}, {}, "synth", "data-free, default protocol"),
    "w8a8": ({"wbits": 8, "abits": 8}, {}, "synth", "data-free, default protocol"),
    "w4a8": ({"wbits": 4, "abits": 8}, {}, "synth", "data-free, default protocol"),
    "gdfq-w4a4": ({"protocol": "gdfq"}, {}, "synth", "gdfq protocol (GDFQ/IntraQ/SynQ tables)"),
    "gdfq-w3a3": ({"protocol": "gdfq", "wbits": 3, "abits": 3}, {}, "synth", "gdfq protocol"),
    "genie-w4a4": ({"protocol": "genie"}, {}, "synth", "genie protocol (Genie/BRECQ tables)"),
    "noise-noft": (NO_FT, {}, "noise", "baseline: Gaussian noise calibration, no fine-tuning"),
    "bn-noft": (NO_FT, {"method": "bn"}, "synth", "baseline: BN-statistics synthesis, no FT"),
    "real-ft": ({}, {}, "real", "real train-5k images + fine-tuning (CIFAR ceiling)"),
    "real-xfit": ({}, {}, "xfit", "real images, 2-fold cross-fit over class halves (ImageNet)"),
    "bn-w4a4": ({}, {"method": "bn"}, "synth", "method bn"),
    "dfad-w4a4": ({}, {"method": "dfad"}, "synth", "method dfad"),
    "rdskd-w4a4": ({}, {"method": "rdskd"}, "synth", "method rdskd"),
    "bn-gdfq-w4a4": ({"protocol": "gdfq"}, {"method": "bn"}, "synth", "method bn, gdfq"),
    "dfad-gdfq-w4a4": ({"protocol": "gdfq"}, {"method": "dfad"}, "synth", "method dfad, gdfq"),
    "rdskd-gdfq-w4a4": ({"protocol": "gdfq"}, {"method": "rdskd"}, "synth", "rdskd, gdfq"),
    "bn-gdfq-w3a3": (
        {"protocol": "gdfq", "wbits": 3, "abits": 3},
        {"method": "bn"},
        "synth",
        "method bn, gdfq W3A3",
    ),
    "dfad-gdfq-w3a3": (
        {"protocol": "gdfq", "wbits": 3, "abits": 3},
        {"method": "dfad"},
        "synth",
        "method dfad, gdfq W3A3",
    ),
    "rdskd-gdfq-w3a3": (
        {"protocol": "gdfq", "wbits": 3, "abits": 3},
        {"method": "rdskd"},
        "synth",
        "method rdskd, gdfq W3A3",
    ),
}


def fp_model(name: str):
    return load_model(name, weights=SHARED / "models" / WEIGHTS[name])


def test_sets(name: str, dc, select: bool) -> dict[str, ImageSet]:
    if name.startswith("cifar10_"):
        files = {**CIFAR_TESTS, **(SELECT if select else {})}
        return {k: load_images(SHARED / "data" / f, dc) for k, f in files.items()}
    full = load_images(SHARED / "data" / IMAGENET, dc)
    x, y = full.x, full.y
    even, odd = (y % 2 == 0), (y % 2 == 1)
    return {
        "all": ImageSet(x, y, source=IMAGENET),
        "even": ImageSet(x[even], y[even], source="even classes"),
        "odd": ImageSet(x[odd], y[odd], source="odd classes"),
    }


@torch.no_grad()
def heldout_set(model, path: Path) -> ImageSet:
    """Synthetic images the quantized model never saw, labelled by the FP model: agreement with
    FP, which recipes for ImageNet models may be chosen on (imagenet-sample-1k only reports)."""
    x = torch.load(path, weights_only=True).float()
    y = torch.cat([model.eval()(b).argmax(1) for b in x.split(64)])
    return ImageSet(x, y, normalized=True, source=f"held-out synthetic {path.name}")


def accuracy(model, dc, tests) -> dict[str, float]:
    return {k: evaluate(model, v, dc, show_progress=False)["top1"] for k, v in tests.items()}


class Calibration:
    """Calibration sets per (kind, method, seed), made once per process."""

    def __init__(self, name, dc, args, device):
        self.name, self.dc, self.args, self.device = name, dc, args, device
        self.cache: dict = {}

    def get(self, kind, synth_changes, qcfg, seed):
        synth_changes = {**self.args.synth_changes, **synth_changes}
        key = (kind, synth_changes.get("method", "default"), seed)
        if key not in self.cache:
            data = self._disk(key, synth_changes)
            if data is None:
                data = self._make(kind, synth_changes, qcfg, seed)
                if kind == "synth" and not set(synth_changes) - {"method"}:
                    self.remember(key, data)
            self.cache[key] = data
        return self.cache[key]

    def _disk(self, key, synth_changes):
        """A fixed set made earlier with the same recipe (`--reuse`); DFAD's live source is not."""
        path = Path(self.args.out) / "sets" / "{}-{}-s{}.pt".format(*key)
        if not self.args.reuse or set(synth_changes) - {"method"} or key[1] == "dfad":
            return None
        if path.is_file():
            print(f"  reusing {path}", flush=True)
            return torch.load(path, weights_only=True)
        return None

    def remember(self, key, data) -> None:
        if isinstance(data, torch.Tensor):
            path = Path(self.args.out) / "sets" / "{}-{}-s{}.pt".format(*key)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(data, path)

    def _make(self, kind, synth_changes, qcfg, seed):
        dc, n = self.dc, self.args.num_images
        if kind == "noise":
            return torch.randn(n, *dc.input_size, generator=torch.Generator().manual_seed(seed))
        if kind == "real":
            imgs = load_images(SHARED / "data" / SELECT["train5k"], dc)
            idx = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(seed))[:n]
            return imgs.normalize(imgs.x[idx], dc)
        model, _ = fp_model(self.name)
        scfg = synth_config(
            None, dc, {"num_images": n, "seed": seed, **synth_changes}, device=self.device
        )
        student = quantized_student(model, qcfg, dc, seed, self.device)
        start = time.perf_counter()
        calib = synthesize(model, scfg, dc, student=student, progress=False, device=self.device)
        print(
            f"  synthesized {len(calib)} ({scfg.method}, seed {seed}) in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        return calib.source if calib.source is not None else calib.images


def run_experiment(exp, name, dc, tests, cal, args, out_dir, seed, device) -> dict:
    qchanges, schanges, kind, note = EXPERIMENTS[exp]
    base = quant_config(None, dc, args.quant_changes, device=device)
    cfg = replace(base, **qchanges)
    start = time.perf_counter()
    if kind == "e2e":
        model, _ = fp_model(name)
        scfg = synth_config(
            None,
            dc,
            {"num_images": args.num_images, "seed": seed, **args.synth_changes, **schanges},
            device=device,
        )
        try:
            report = run_quantize(
                model,
                name,
                dc,
                cfg,
                out_dir / f"{exp}-s{seed}",
                synth_cfg=scfg,
                seed=seed,
                device=device,
                overwrite=True,
                progress=False,
                recipe_choice=recipe_choice(dc, device),
            )
        except DfqFailure as e:  # e.g. the export check: the PyTorch model is still measured
            report = {"stages": {}, "failure": str(e)}
        return {
            "acc": accuracy(model, dc, tests),
            "note": note,
            "seconds": round(time.perf_counter() - start, 1),
            "stages": {k: v["seconds"] for k, v in report["stages"].items()},
            "check": report.get("export", {}).get("check"),
            "failure": report.get("failure"),
        }
    if kind == "xfit":
        return _crossfit(name, dc, tests, cfg, args, seed, note, start)
    data = cal.get(kind, schanges, cfg, seed)
    model, _ = fp_model(name)
    report = quantize_(model, cfg, data, progress=False, seed=seed)
    return {
        "acc": accuracy(model, dc, tests),
        "note": note,
        "seconds": round(time.perf_counter() - start, 1),
        "kd_loss_final": report["stages"]["bake"]["kd_loss"],
        **heldout_kd(model, name, tests, cfg),
    }


def heldout_kd(model, name, tests, cfg) -> dict:
    """The distillation loss to FP on the held-out synthetic set: a less noisy selection figure
    than the agreement on a few hundred images."""
    if "synth-heldout" not in tests:
        return {}
    fp, _ = fp_model(name)
    x = tests["synth-heldout"].x
    return {"heldout_kd_loss": round(mean_kd_loss(model, fp, x, cfg.kd_temperature), 6)}


def _crossfit(name, dc, tests, cfg, args, seed, note, start) -> dict:
    """Calibrate + fine-tune on one half of the classes, score on the other, both ways."""
    correct, acc = 0.0, {}
    for fit, score in (("even", "odd"), ("odd", "even")):
        imgs = tests[fit]
        model, _ = fp_model(name)
        quantize_(model, cfg, imgs.normalize(imgs.x, dc), progress=False, seed=seed)
        acc[score] = evaluate(model, tests[score], dc, show_progress=False)["top1"]
        correct += acc[score] * len(tests[score])
    acc["all"] = round(correct / len(tests["all"]), 2)
    return {"acc": acc, "note": note, "seconds": round(time.perf_counter() - start, 1)}


def write_tables(results: dict, out_dir: Path) -> None:
    """results.json, and results.md: per experiment, each test set's mean drop and its spread."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    lines = []
    for name, res in results.items():
        fp = res["fp"]
        keys = list(fp)
        lines += [
            f"### {name} (FP: " + ", ".join(f"{k} {v:.2f}" for k, v in fp.items()) + ")",
            "",
            "| experiment | seeds | "
            + " | ".join(f"{k} (drop)" for k in keys)
            + " | seconds | note |",
            "|---" * (len(keys) + 4) + "|",
        ]
        for exp, runs in res.items():
            if exp == "fp":
                continue
            cells = []
            for k in keys:
                accs = [r["acc"][k] for r in runs.values() if k in r["acc"]]
                if not accs:
                    cells.append("")
                    continue
                mean = statistics.mean(accs)
                spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
                cells.append(f"{mean:.2f}{spread} ({fp[k] - mean:.2f})")
            secs = statistics.mean(r["seconds"] for r in runs.values())
            note = next(iter(runs.values()))["note"]
            lines.append(
                f"| {exp} | {','.join(runs)} | " + " | ".join(cells) + f" | {secs:.0f} | {note} |"
            )
        lines.append("")
    (out_dir / "results.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar10_resnet20", choices=sorted(WEIGHTS))
    ap.add_argument("--only", default="e2e-w4a4,w8a8", help=f"of {', '.join(EXPERIMENTS)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--num-images", type=int, default=None, help="[recipe]")
    ap.add_argument("--select", action="store_true", help="also score on the train-5k split")
    ap.add_argument(
        "--heldout",
        default=None,
        help="a saved synthetic set (.pt, normalized images) to also score on, labelled by the FP "
        "model's argmax: the data-free selection split for ImageNet models",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    add_recipe_changes(ap, "synth", "every experiment")
    add_recipe_changes(ap, "quant", "every experiment")
    ap.add_argument("--tag", default="", help="suffix of the experiment names in the tables")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse synthetic sets saved by an earlier run in OUT/sets (same recipe)",
    )
    ap.add_argument("--out", default="runs/bench_quant")
    args = ap.parse_args()
    args.synth_changes = recipe_changes(args.synth)
    args.quant_changes = recipe_changes(args.quant)
    keep_freed_memory()
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
    model, dc = fp_model(args.model)
    if args.num_images is None:
        args.num_images = synth_config(None, dc, device=args.device).num_images
    tests = test_sets(args.model, dc, args.select)
    if args.heldout:
        tests["synth-heldout"] = heldout_set(model, Path(args.heldout))
    res = results.setdefault(args.model, {})
    res["fp"] = accuracy(model, dc, tests)
    print(args.model, "fp", res["fp"], flush=True)
    cal = Calibration(args.model, dc, args, args.device)
    for seed in (int(s) for s in args.seeds.split(",")):
        for exp in only:
            r = run_experiment(exp, args.model, dc, tests, cal, args, out_dir, seed, args.device)
            res.setdefault(exp + args.tag, {})[str(seed)] = r
            write_tables(results, out_dir)
            print(args.model, exp, f"seed {seed}", r, flush=True)


if __name__ == "__main__":
    main()
