"""How far correct executions of one quantized model disagree: the noise the export check allows.

For a `dfq quantize` output (quantized.pt, model.onnx, calibration.npz) the logits of four
executions on its calibration images: PyTorch float32 (what the user's model computes), PyTorch
float64 (its arithmetic made exact), onnxruntime's fused integer kernels and onnxruntime's
unoptimized float32 reference run. For each pair: argmax changes, images within one output step,
median and worst deviation in output steps. Then, for the first `--trace` images where
onnxruntime's reference run and PyTorch float64 part by more than one step, the first quantizer
whose codes differ, how many values, and how close each was to a rounding tie (the float64
value's distance from the half step). Writes runs/check_noise/<run name>.json and .md.

    python tools/bench_check_noise.py --run runs/final_lite0_check/e2e-w4a4-s0
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import tempfile
from pathlib import Path

import onnx
import torch

from dfq.calibration import load_calibration
from dfq.export.check import (
    activation_dqs,
    exact_logits,
    output_step,
    per_image,
    session_with_outputs,
)
from dfq.export.runtime import onnx_predictor, open_session, session_options
from dfq.export.trace import INPUT_NAME
from dfq.quant.saved import load_quantized

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def executions(model, path: Path, images: torch.Tensor, threads: int) -> dict[str, torch.Tensor]:
    def ort_run(optimize: bool) -> torch.Tensor:
        opts = session_options(threads, optimize=optimize)
        return onnx_predictor(open_session(path, options=opts))(images)

    return {
        "torch-f32": model.eval()(images).float(),
        "torch-f64": exact_logits(model, images),
        "ort-fused": ort_run(True),
        "ort-reference": ort_run(False),
    }


def pairs(logits: dict[str, torch.Tensor], step: float) -> list[dict]:
    rows, names = [], list(logits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            dev, agree = per_image(logits[a], logits[b], step)
            rows.append(
                {
                    "pair": f"{a} vs {b}",
                    "argmax_changes": int((~agree).sum()),
                    "within_one_step": round(float((dev <= 1).float().mean()), 4),
                    "median_dev_steps": round(float(dev.median()), 3),
                    "max_dev_steps": round(float(dev.max()), 2),
                }
            )
    return rows


@torch.no_grad()
def first_ties(model, path: Path, images: torch.Tensor, which: list[int]) -> list[dict]:
    """For each image in `which`: the first quantizer whose codes differ between onnxruntime's
    reference run and PyTorch float64, and how far its differing values were from a tie."""
    proto = onnx.load(str(path))
    dqs = activation_dqs(proto, model)
    exact = copy.deepcopy(model).eval().double()
    tags = sorted({t for _, t in dqs})
    ins: dict[str, list] = {t: [] for t in tags}
    outs: dict[str, list] = {t: [] for t in tags}

    def hook(tag):
        def f(_m, inp, out):
            ins[tag].append(inp[0].detach().clone())
            outs[tag].append(out.detach().clone())

        return f

    handles = [exact.get_submodule(t).register_forward_hook(hook(t)) for t in tags]
    sel = images[which]
    exact(sel.double())
    for h in handles:
        h.remove()
    with tempfile.TemporaryDirectory() as tmp:
        sess = session_with_outputs(proto, [n.output[0] for n, _ in dqs], Path(tmp))
        got = sess.run([n.output[0] for n, _ in dqs], {INPUT_NAME: sel.float().numpy()})
    rows = []
    for j, img in enumerate(which):
        calls: dict[str, int] = {}
        for (node, tag), value in zip(dqs, got, strict=True):
            k = calls[tag] = calls.get(tag, -1) + 1
            if k >= len(outs[tag]) or tuple(outs[tag][k].shape[1:]) != value.shape[1:]:
                continue
            q = exact.get_submodule(tag)
            x = ins[tag][k][j]
            s = q.step(ins[tag][k]).double()
            if s.numel() > 1:  # per channel along dim 1
                s = s.reshape(-1, *([1] * (x.dim() - 1)))
            off = (outs[tag][k][j] - torch.from_numpy(value[j]).double()).abs() / s > 0.5
            if off.any():
                u = (x / s)[off]
                rows.append(
                    {
                        "image": img,
                        "node": node.name,
                        "bits": q.bits,
                        "values_off": int(off.sum()),
                        "values": off.numel(),
                        "distance_from_tie_steps": [
                            float(f"{v:.2g}") for v in ((u - u.floor() - 0.5).abs()[:4]).tolist()
                        ],
                    }
                )
                break
    return rows


def markdown(report: dict) -> str:
    out = [
        f"# Export-check noise: {report['run']}",
        "",
        f"{report['images']} calibration images, output step {report['step']:.4g}; "
        f"{report['date']}, {report['machine']}, {report['threads']} threads.",
        "",
        "| pair | argmax changes | within one step | median dev (steps) | worst (steps) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["pairs"]:
        out.append(
            f"| {r['pair']} | {r['argmax_changes']} | {100 * r['within_one_step']:.1f}% | "
            f"{r['median_dev_steps']} | {r['max_dev_steps']} |"
        )
    out += ["", "| image | first differing quantizer | bits | values off | distance from tie |"]
    out.append("| --- | --- | --- | --- | --- |")
    for r in report["ties"]:
        out.append(
            f"| {r['image']} | {r['node']} | {r['bits']} | {r['values_off']} of {r['values']} | "
            f"{r['distance_from_tie_steps']} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a dfq quantize output directory")
    ap.add_argument("--images", type=int, default=256, help="calibration images compared")
    ap.add_argument("--trace", type=int, default=8, help="diverging images traced to a tie")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "check_noise")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_quantized(args.run)
    images = load_calibration(args.run / "calibration.npz").images[: args.images].float()
    path = args.run / "model.onnx"
    logits = executions(model, path, images, args.threads)
    step = output_step(logits["torch-f32"])
    dev, _ = per_image(logits["torch-f64"], logits["ort-reference"], step)
    which = [int(i) for i in torch.nonzero(dev > 1).flatten()[: args.trace]]
    report = {
        "run": str(args.run),
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(),
        "threads": args.threads,
        "images": len(images),
        "step": step,
        "pairs": pairs(logits, step),
        "ties": first_ties(model, path, images, which),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.run.name
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
