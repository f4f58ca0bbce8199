"""Benchmark of issue 5: does the exported QDQ ONNX compute what PyTorch computes, fused and fast?

Part 1 (fidelity): cifar10_resnet20 with its real weights, quantized W8A8 and W4A4 by dfq.quant
(range init only, a short calibration: this measures the exporter, not the quantizer), exported
with `export_quantized`: onnxruntime top-1 vs PyTorch fake-quant top-1 on jpeg-10k, argmax agreement
on the calibration images, and integer convolutions in onnxruntime's optimized graph. With
`--runs DIR...` the same comparison for `dfq quantize` outputs (the fine-tuned models users get),
agreement measured on their whole calibration set.

Part 2 (speed): torchvision resnet18 (random init) W8A8 ONNX vs its FP32 ONNX at batch 1 and 8,
timed alternately in one process so both see the same machine load; file sizes; a per-operator
profile when the speed-up stays under 2x.

Run under the shared lock: `flock /tmp/dfq-bench.lock python tools/bench_export.py`.
Writes runs/bench_export/report.md and report.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dfq.data import load_images
from dfq.evaluate import evaluate
from dfq.export import ExportConfig, export_onnx, export_quantized
from dfq.export.runtime import (
    integer_conv_count,
    onnx_predictor,
    open_session,
    optimized_op_counts,
    session_options,
)
from dfq.models import load_model
from dfq.quant.insert import prepare
from dfq.quant.layers import QuantConv2d, quant_layers
from dfq.quant.quant_config import QuantConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OUT = Path(__file__).resolve().parents[1] / "runs" / "bench_export"


def quantize(model: torch.nn.Module, bits: int, calib: torch.Tensor) -> None:
    prepare(model, QuantConfig(wbits=bits, abits=bits), list(calib.split(64)))
    for layer in quant_layers(model).values():
        layer.bake()


def fidelity(bits: int, n_calib: int, limit: int | None) -> dict:
    """ResNet-20 W{bits}A{bits}: PyTorch vs onnxruntime accuracy, agreement and fusion."""
    model, cfg = load_model("cifar10_resnet20", weights=SHARED / "models/cifar10-resnet20.th")
    # Calibration from the real-data baseline split: this benchmark measures the exporter only.
    train = load_images(SHARED / "data/cifar10-train-jpeg-5k.npz", cfg)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_calib]
    calib = train.normalize(train.x[idx], cfg)
    quantize(model, bits, calib)
    out_dir = OUT / f"resnet20_w{bits}a{bits}"
    t0 = time.perf_counter()
    summary = export_quantized(model, out_dir, cfg, calib)
    export_s = time.perf_counter() - t0
    row = {"model": "cifar10_resnet20", "bits": f"W{bits}A{bits}", "calib_images": n_calib}
    row.update(compare_runtimes(model, cfg, out_dir / "model.onnx", calib, limit))
    row.update(
        export_check=summary["check"],
        quantizers_added=len(summary["quantizers_added"]),
        export_seconds=round(export_s, 1),
        onnx_bytes=summary["bytes"],
    )
    return row


def fidelity_of_run(run_dir: Path, limit: int | None) -> dict:
    """The same comparison for a `dfq quantize` output: its model.onnx, checked on its whole
    calibration set (the fine-tuned model a user gets, not a range-initialized one)."""
    from dfq.calibration import load_calibration
    from dfq.quant.saved import load_quantized

    model, cfg = load_quantized(run_dir)
    calib = load_calibration(run_dir / "calibration.npz").images
    report = json.loads((run_dir / "report.json").read_text())
    q = report["config"]["quant"] if "config" in report else {}
    row = {
        "model": f"{run_dir}",
        "bits": f"W{q.get('wbits', '?')}A{q.get('abits', '?')}",
        "calib_images": len(calib),
    }
    row.update(compare_runtimes(model, cfg, run_dir / "model.onnx", calib, limit))
    return row


def compare_runtimes(
    model: torch.nn.Module, cfg, path: Path, calib: torch.Tensor, limit: int | None
) -> dict:
    """Top-1 of PyTorch and onnxruntime on jpeg-10k, argmax agreement on `calib`, fused convs."""
    session = open_session(path)
    predict = onnx_predictor(session)
    test = load_images(SHARED / "data/cifar10-test-jpeg.npz", cfg, limit=limit)
    acc_torch = evaluate(model, test, cfg, show_progress=False)
    acc_ort = evaluate(predict, test, cfg, show_progress=False)
    with torch.no_grad():
        ref = model(calib).argmax(1)
    agree_calib = float((predict(calib).argmax(1) == ref).float().mean())
    counts = optimized_op_counts(path)
    return {
        "test_images": acc_torch["n"],
        "top1_pytorch": acc_torch["top1"],
        "top1_onnxruntime": acc_ort["top1"],
        "top1_delta": round(acc_ort["top1"] - acc_torch["top1"], 2),
        "argmax_agreement_calib": round(100 * agree_calib, 2),
        "quantized_convs": sum(isinstance(m, QuantConv2d) for m in model.modules()),
        "integer_convs_optimized": integer_conv_count(counts),
        "float_ops_left": float_ops(counts),
        "optimized_ops": dict(counts),
    }


FLOAT_OPS = ("Add", "Relu", "Conv", "Gemm", "MatMul")


def float_ops(counts) -> dict:
    """Float Add / Relu / Conv / Gemm / MatMul nodes left in onnxruntime's optimized graph."""
    return {op: counts[op] for op in FLOAT_OPS if counts.get(op)}


def build_resnet18(out_dir: Path, n_calib: int, bits: int = 8) -> tuple[Path, Path, dict]:
    """FP32 and W{bits}A{bits} ONNX of a random-init torchvision resnet18 (range init only: no
    ImageNet weights are reachable here, so no top-1; the export check compares 64 images)."""
    torch.manual_seed(0)
    model, cfg = load_model("torchvision:resnet18", pretrained=False)
    fp = out_dir / "resnet18_fp32.onnx"
    export_onnx(model, fp, ExportConfig(check_images=4), cfg)
    calib = torch.randn(n_calib, *cfg.input_size)
    quantize(model, bits, calib)
    summary = export_quantized(
        model, out_dir / f"resnet18_w{bits}a{bits}", cfg, calib, ExportConfig(check_images=64)
    )
    q = out_dir / f"resnet18_w{bits}a{bits}" / "model.onnx"
    summary["quantized_convs"] = sum(isinstance(m, QuantConv2d) for m in model.modules())
    counts = optimized_op_counts(q)
    summary["integer_convs_optimized"] = integer_conv_count(counts)
    summary["float_ops_left"] = float_ops(counts)
    summary["optimized_ops"] = dict(counts)
    return fp, q, summary


def alternate_timing(
    paths: dict[str, Path], batch: int, rounds: int, runs: int, threads: int | None
) -> dict[str, list[float]]:
    """Median-able run times (ms): each round runs every model `runs` times, models alternating."""
    sessions = {
        k: ort.InferenceSession(
            str(p), session_options(threads), providers=["CPUExecutionProvider"]
        )
        for k, p in paths.items()
    }
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"input": x})
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, {"input": x})
                times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def op_profile(path: Path, batch: int, threads: int | None, runs: int = 10) -> list[tuple]:
    """Share of kernel time per operator type (onnxruntime's own profiler)."""
    opts = session_options(threads, profile=True)
    opts.profile_file_prefix = str(OUT / f"profile_{path.stem}_b{batch}")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {"input": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / runs
    total = sum(per_op.values()) or 1.0
    return [
        (op, round(ms, 3), round(100 * ms / total, 1))
        for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])
    ]


def speed(n_calib: int, rounds: int, threads: int | None) -> dict:
    fp, q, summary = build_resnet18(OUT, n_calib)
    result = {
        "fp32_bytes": fp.stat().st_size,
        "w8a8_bytes": q.stat().st_size,
        "size_ratio": round(q.stat().st_size / fp.stat().st_size, 3),
        "quantized_convs": summary["quantized_convs"],
        "integer_convs_optimized": summary["integer_convs_optimized"],
        "float_ops_left": summary["float_ops_left"],
        "export_check": summary["check"],
        "threads": threads or "onnxruntime default",
        "batches": {},
    }
    for batch in (1, 8):
        runs = 5 if batch == 1 else 2
        t = alternate_timing({"fp32": fp, "w8a8": q}, batch, rounds, runs, threads)
        med = {k: statistics.median(v) for k, v in t.items()}
        result["batches"][batch] = {
            "fp32_ms_median": round(med["fp32"], 2),
            "w8a8_ms_median": round(med["w8a8"], 2),
            "fp32_ms_p10": round(float(np.percentile(t["fp32"], 10)), 2),
            "w8a8_ms_p10": round(float(np.percentile(t["w8a8"], 10)), 2),
            "speedup_median": round(med["fp32"] / med["w8a8"], 2),
            "samples": len(t["fp32"]),
        }
        if med["fp32"] / med["w8a8"] < 2.0:
            result["batches"][batch]["profile_w8a8"] = op_profile(q, batch, threads)
            result["batches"][batch]["profile_fp32"] = op_profile(fp, batch, threads)
    return result


def markdown(report: dict) -> str:
    lines = [
        f"# bench_export ({report['date']}, {report['machine']})",
        "",
        "## onnxruntime vs PyTorch fake quant (jpeg-10k top-1)",
        "",
        (
            "| model | bits | top-1 PyTorch | top-1 onnxruntime | delta | argmax agreement "
            "(calib) | integer convs / quantized convs | float Add/Relu/Conv/Gemm left | "
            "export check: within allowed steps, argmax agreement |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["fidelity"]:
        c = r.get("export_check") or r.get("check")
        check = (
            f"{100 * c['within_allowed']:.1f}% within {c['allowed_steps']}, "
            f"{100 * c['argmax_agreement']:.1f}% (needed "
            f"{100 * c['agreement_needed']:.1f}%)"
            if c and "within_allowed" in c
            else ""
        )
        top = (
            f"{r['top1_pytorch']:.2f} | {r['top1_onnxruntime']:.2f} | {r['top1_delta']:+.2f} | "
            f"{r['argmax_agreement_calib']:.2f}% ({r['calib_images']})"
            if "top1_pytorch" in r
            else "n/a (random init) | | | "
        )
        lines.append(
            f"| {r['model']} | {r['bits']} | {top} | "
            f"{r['integer_convs_optimized']} / {r['quantized_convs']} | "
            f"{r.get('float_ops_left') or 'none'} | {check} |"
        )
    if report.get("speed"):
        s = report["speed"]
        lines += [
            "",
            "## torchvision resnet18 (random init), W8A8 vs FP32 ONNX, onnxruntime CPU",
            "",
            f"integer convs {s['integer_convs_optimized']} / {s['quantized_convs']} "
            f"quantized, float ops left {s['float_ops_left'] or 'none'}; "
            f"file {s['w8a8_bytes'] / 1e6:.1f} MB vs {s['fp32_bytes'] / 1e6:.1f} MB "
            f"({100 * s['size_ratio']:.1f}%); threads: {s['threads']}",
            "",
            "| batch | FP32 ms (median) | W8A8 ms (median) | speed-up | samples each |",
            "| --- | --- | --- | --- | --- |",
        ]
        for b, r in s["batches"].items():
            lines.append(
                f"| {b} | {r['fp32_ms_median']} | {r['w8a8_ms_median']} | "
                f"{r['speedup_median']}x | {r['samples']} |"
            )
        for b, r in s["batches"].items():
            if "profile_w8a8" in r:
                lines += ["", f"Per-operator profile, batch {b} (ms per run, share):", ""]
                for name in ("w8a8", "fp32"):
                    top = r[f"profile_{name}"][:8]
                    ops = ", ".join(f"{op} {ms} ({pct}%)" for op, ms, pct in top)
                    lines.append(f"- {name}: {ops}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=256, help="calibration images for ResNet-20")
    ap.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--rounds", type=int, default=12, help="alternating timing rounds")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument(
        "--runs",
        type=Path,
        nargs="*",
        default=[],
        help="`dfq quantize` output directories to check the same way (their "
        "model.onnx against quantized.pt, agreement on their calibration.npz)",
    )
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}",
        "fidelity": [],
        "speed": None,
    }
    if not args.skip_fidelity:
        for bits in (8, 4):
            report["fidelity"].append(fidelity(bits, args.calib, args.limit))
            print(json.dumps(report["fidelity"][-1], indent=1), flush=True)
    for run_dir in args.runs:
        report["fidelity"].append(fidelity_of_run(run_dir, args.limit))
        print(json.dumps(report["fidelity"][-1], indent=1), flush=True)
    if not args.skip_fidelity:
        summary = build_resnet18(OUT, 64, bits=4)[2]
        report["fidelity"].append(
            {
                "model": "torchvision:resnet18 (random init)",
                "bits": "W4A4",
                **{
                    k: summary[k]
                    for k in (
                        "quantized_convs",
                        "integer_convs_optimized",
                        "float_ops_left",
                        "check",
                    )
                },
            }
        )
        print(json.dumps(report["fidelity"][-1], indent=1), flush=True)
    if not args.skip_speed:
        report["speed"] = speed(64, args.rounds, args.threads)
        print(json.dumps(report["speed"], indent=1), flush=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    (OUT / "report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
