"""Score exported models on a held-out synthetic set: what recipe choices may be made on.

Models quantized elsewhere (a GPU machine, whose quantized.pt is too large to come back) return
as model.onnx. This runs each file with onnxruntime on a held-out synthetic set (images no run
saw, labelled by the FP model's argmax), int8 weights as an exact uint8 copy where this CPU's
int8 kernels saturate (`dfq.export.weight_codes`), and prints its distillation loss to the FP
model (the recipes' temperature, 4) and its argmax agreement with FP, as
`tools/bench_quant.py --heldout` does for PyTorch models. Writes OUT/heldout.json with --out.

    python tools/onnx_heldout.py --model timm:tf_efficientnet_lite0 \
        --heldout runs/bench_lite0/sets/synth-bn-s0.pt runs/gpu1127b/*.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_quant import fp_model, heldout_set

from dfq.export.ort_eval import exact_session
from dfq.export.runtime import onnx_predictor
from dfq.synth.student import kd_loss


@torch.no_grad()
def score(predict, fp, x: torch.Tensor, temperature: float) -> dict:
    kd, agree = 0.0, 0
    for b in x.split(32):
        out, ref = predict(b), fp(b)
        kd += float(kd_loss(out, ref, temperature)) * len(b)
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
    return {
        "heldout_kd": round(kd / len(x), 4),
        "heldout_agreement": round(100 * agree / len(x), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", nargs="+", type=Path)
    ap.add_argument("--model", default="timm:tf_efficientnet_lite0")
    ap.add_argument("--heldout", type=Path, required=True)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    fp = fp_model(args.model)[0].eval()
    x = heldout_set(fp, args.heldout).x
    results = {}
    for path in args.onnx:
        session, shifted = exact_session(path, None, None)
        results[path.name] = {
            **score(onnx_predictor(session), fp, x, args.temperature),
            "weights_shifted": shifted,
        }
        print(f"{path}: {results[path.name]}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "heldout.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
