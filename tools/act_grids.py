"""Would an asymmetric activation grid help? Per module input, the best 4-bit squared error of
dfq's grid (zero point 0: symmetric when signed, from 0 when not) against an asymmetric one.

dfq keeps every zero point at 0 so that exported graphs stay on the kernels TensorRT and
onnxruntime fuse; this measures what that costs on a model's residual stream. Each tensor is
subsampled (every 7th value), both grids searched over clipping points by grid search.

    python tools/act_grids.py --model timm:tf_efficientnet_lite0 \
        --calib runs/lite0_eq/sets/synth-default-s0.pt --images 32
"""

from __future__ import annotations

import argparse
import re

import torch
from bench_quant import fp_model


def zero_point_0(t: torch.Tensor, bits: int) -> float:
    signed = bool(t.min() < 0)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    top = t.abs().max() if signed else t.max()
    best = float("inf")
    for f in torch.linspace(0.05, 1.0, 60):
        s = top * f / qmax
        best = min(best, float((torch.clamp(torch.round(t / s), qmin, qmax) * s - t).pow(2).mean()))
    return best


def asymmetric(t: torch.Tensor, bits: int) -> float:
    lo, hi, levels = t.min(), t.max(), 2**bits - 1
    best = float("inf")
    for fl in torch.linspace(0.05, 1.0, 25):
        for fh in torch.linspace(0.05, 1.0, 25):
            a, b = lo * fl, hi * fh
            s = (b - a) / levels
            z = torch.round(-a / s)
            q = (torch.clamp(torch.round(t / s) + z, 0, levels) - z) * s
            best = min(best, float((q - t).pow(2).mean()))
    return best


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="timm:tf_efficientnet_lite0")
    ap.add_argument("--calib", required=True, help="a saved set (.pt tensor, normalized images)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--modules", default=r"^blocks\.\d+\.\d+$", help="regex of module names")
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    model, _ = fp_model(args.model)
    model.eval()
    inputs: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if re.match(args.modules, name):
            m.register_forward_pre_hook(lambda _m, inp, n=name: inputs.__setitem__(n, inp[0]))
    model(torch.load(args.calib, weights_only=True)[: args.images])
    print("| input of | min | max | MSE, zero point 0 | MSE, asymmetric | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in inputs.items():
        t = t.flatten()[::7]
        e0, ea = zero_point_0(t, args.bits), asymmetric(t, args.bits)
        print(f"| {name} | {t.min():.2f} | {t.max():.2f} | {e0:.4f} | {ea:.4f} | {ea / e0:.2f} |")


if __name__ == "__main__":
    main()
