"""What the fake quantizers cost a training step: forward + backward of a quantized model with
`dfq.quant.quantizer.fake_quant` (LSQ's gradients written out), with the same quantizers as plain
autograd through `clamp(round_ste(x / s)) * s` (dfq's quantizer before 2026-11-27), and with the
quantizers off. Ratios from one run, interleaved rounds, median of each. Writes OUT/fake_quant.json.

    python tools/bench_fake_quant.py --run runs/e2e4_lite0/e2e-w4a4-s0 --batch 32
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from dfq.quant import quantizer as Q
from dfq.quant.saved import load_quantized


def autograd_forward(self: Q.Quantizer, x: torch.Tensor) -> torch.Tensor:
    """The quantizer's forward as plain autograd (straight-through rounding, LSQ step gradient)."""
    if not self.enabled:
        return x
    s = self.step(x)
    if self.scale.requires_grad and torch.is_grad_enabled():
        f = 1.0 / math.sqrt(x.numel() / max(1, self.scale.numel()) * max(1, self.qmax))
        s = (s - s * f).detach() + s * f
    v = torch.clamp(x / s, self.qmin, self.qmax)
    return ((v.round() - v).detach() + v) * s


@contextmanager
def variant(name: str, model: torch.nn.Module):
    if name == "autograd":
        fast = Q.Quantizer.forward
        Q.Quantizer.forward = autograd_forward
        try:
            yield
        finally:
            Q.Quantizer.forward = fast
    elif name == "off":
        with Q.disabled(Q.all_quantizers(model)):
            yield
    else:
        yield


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a `dfq quantize` output directory")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/fake_quant")
    args = ap.parse_args()

    model, dc = load_quantized(args.run)
    model.requires_grad_(True)
    x = torch.randn(args.batch, *dc.input_size, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    names = ("fake_quant", "autograd", "off")
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds + 1):
        for n in names:
            with variant(n, model):
                t = time.perf_counter()
                step()
                if r:  # the first round warms up
                    times[n].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    result = {
        "run": args.run,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "seconds_per_step": {n: round(v, 3) for n, v in med.items()},
        "autograd_over_fake_quant": round(med["autograd"] / med["fake_quant"], 2),
        "quantizer_share_autograd": round(1 - med["off"] / med["autograd"], 3),
        "quantizer_share_fake_quant": round(1 - med["off"] / med["fake_quant"], 3),
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fake_quant.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
