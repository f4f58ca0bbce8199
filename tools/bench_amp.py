"""How far bfloat16 autocast moves a quantized model: the same model run in float32 and in bf16.

On CUDA, `amp: auto` runs synthesis, distillation and reconstruction under bfloat16 autocast
(the quantizers' own arithmetic in float32, their inputs rounded by the bf16 layer before them).
This measures, on a held-out synthetic set labelled by the FP model's argmax (data-free, so it
may guide choices), the distillation loss to the float32 FP teacher and the argmax agreement of
the FP model and of a `dfq quantize` output, each in float32 and under bf16 autocast, and how
often the two precisions of one model disagree. CPU autocast rounds like CUDA's (bf16 storage,
float32 accumulation), so the figures hold for the GPU path's arithmetic. Writes OUT/amp.json.

    python tools/bench_amp.py --run runs/e2e4_lite0/e2e-w4a4-s0 \
        --heldout runs/bench_lite0/sets/synth-bn-s0.pt --out runs/amp_lite0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_quant import fp_model

from dfq.quant.saved import load_quantized
from dfq.synth.student import kd_loss


@torch.no_grad()
def logits(model, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    out = []
    for b in x.split(32):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(model(b).float())
    return torch.cat(out)


def compare(name: str, model, ref: torch.Tensor, x: torch.Tensor, t: float) -> dict:
    fp32, bf16 = logits(model, x, False), logits(model, x, True)
    top = ref.argmax(1)

    def score(y: torch.Tensor) -> dict:
        return {
            "kd_loss": round(float(kd_loss(y, ref, t)), 6),
            "agree": round(100 * float(y.argmax(1).eq(top).float().mean()), 2),
        }

    row = {
        "float32": score(fp32),
        "bf16": score(bf16),
        "argmax_changes": round(100 * float(fp32.argmax(1).ne(bf16.argmax(1)).float().mean()), 2),
        "max_logit_diff": round(float((fp32 - bf16).abs().max()), 4),
    }
    print(name, json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a `dfq quantize` output directory")
    ap.add_argument("--heldout", required=True, help="saved held-out synthetic set (.pt)")
    ap.add_argument("--heldout-images", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--out", default="runs/amp")
    args = ap.parse_args()

    quant, _ = load_quantized(args.run)
    payload = torch.load(Path(args.run) / "quantized.pt", map_location="cpu", weights_only=True)
    fp, _ = fp_model(payload["model"])
    fp.eval()
    x = torch.load(args.heldout, weights_only=True).float()[: args.heldout_images]
    ref = logits(fp, x, False)
    t = args.temperature
    result = {
        "run": args.run,
        "heldout": args.heldout,
        "images": len(x),
        "fp": compare("fp", fp, ref, x, t),
        "quantized": compare("quantized", quant, ref, x, t),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "amp.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
