"""Which activation quantizers cost the most: each one left float in turn, the loss to FP measured.

Quantizes a model with the shipped recipe on a saved calibration set (fine-tuning off unless
`--quant` turns it on), then, for every per-tensor activation quantizer, disables it alone and
records the distillation loss to the FP model and the argmax agreement on a held-out set (a saved
synthetic set, labelled by the FP model: data-free, so it may guide choices). Also each group of
quantizers (by the role of the tensor: a block's input, a depthwise conv's input, ...) left float
together. Writes OUT/sensitivity.json and a table OUT/sensitivity.md.

    python tools/bench_sensitivity.py --model timm:tf_efficientnet_lite0 \
        --calib runs/lite0_gptq/sets/synth-default-s0.pt \
        --heldout runs/bench_lite0/sets/synth-bn-s0.pt --out runs/sensitivity_lite0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_quant import WEIGHTS, fp_model
from recipe_args import add_recipe_changes, recipe_changes
from torch import nn

from dfq.quant.attached import attached_quantizers
from dfq.quant.distill import mean_kd_loss
from dfq.quant.layers import quant_layers
from dfq.quant.pipeline import quantize_
from dfq.quant.quantizer import Quantizer, disabled
from dfq.run.recipe import quant_config


def activation_roles(model: nn.Module) -> dict[str, tuple[Quantizer, str]]:
    """Quantizer name -> (quantizer, role): a block's input (the residual stream), a depthwise
    conv's input, a 1x1 conv's input, another conv's, a linear layer's, an activation's output."""
    out: dict[str, tuple[Quantizer, str]] = {}
    for name, q in attached_quantizers(model, "input").items():
        out[f"{name} (block input)"] = (q, "block input")
    for name, q in attached_quantizers(model, "output").items():
        out[f"{name} (output)"] = (q, "activation output")
    for name, layer in quant_layers(model).items():
        if layer.input_quantizer is None:
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels:
            role = "depthwise conv input"
        elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
            role = "1x1 conv input"
        elif isinstance(layer, nn.Conv2d):
            role = "conv input"
        else:
            role = "linear input"
        out[f"{name} (input)"] = (layer.input_quantizer, role)
    return out


@torch.no_grad()
def score(model: nn.Module, fp: nn.Module, x: torch.Tensor, fp_top: torch.Tensor, t: float):
    agree = torch.cat([model(b).argmax(1) for b in x.split(64)]).eq(fp_top).float().mean()
    return {
        "kd_loss": round(mean_kd_loss(model, fp, x, t), 6),
        "agree": round(100 * float(agree), 2),
    }


def add_probe_args(ap: argparse.ArgumentParser) -> None:
    """The model, its saved calibration set and the held-out synthetic set a probe scores on."""
    ap.add_argument("--model", default="timm:tf_efficientnet_lite0", choices=sorted(WEIGHTS))
    ap.add_argument("--calib", required=True, help="saved calibration set (.pt, normalized)")
    ap.add_argument("--heldout", required=True, help="saved held-out synthetic set (.pt)")
    ap.add_argument("--heldout-images", type=int, default=96)


def load_probe(args: argparse.Namespace):
    """(FP model in eval mode, its data config, calibration images, held-out images, the FP
    model's argmax on them) for the arguments of `add_probe_args`."""
    fp, dc = fp_model(args.model)
    fp.eval()
    calib = torch.load(args.calib, weights_only=True).float()
    x = torch.load(args.heldout, weights_only=True).float()[: args.heldout_images]
    with torch.no_grad():
        fp_top = torch.cat([fp(b).argmax(1) for b in x.split(64)])
    return fp, dc, calib, x, fp_top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(ap)
    ap.add_argument("--device", default="cpu")
    add_recipe_changes(ap, "quant", "the quantized model (default: W4A4, no fine-tuning)")
    ap.add_argument("--out", default="runs/sensitivity")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp, dc, calib, x, fp_top = load_probe(args)
    changes = {"reconstruct": False, "kd_iters": 0, **recipe_changes(args.quant)}
    cfg = quant_config(None, dc, changes, device=args.device)
    model, _ = fp_model(args.model)
    start = time.perf_counter()
    quantize_(model, cfg, calib, progress=False)
    print(f"quantized in {time.perf_counter() - start:.0f} s", flush=True)
    t = cfg.kd_temperature
    base = score(model, fp, x, fp_top, t)
    roles = activation_roles(model)
    every = [q for q, _ in roles.values()]
    with disabled(every):
        float_acts = score(model, fp, x, fp_top, t)
    results = {"quantized": base, "all activations float": float_acts, "groups": {}, "each": {}}
    print(f"quantized {base}; all activations float {float_acts}", flush=True)
    for role in sorted({r for _, r in roles.values()}):
        qs = [q for q, r in roles.values() if r == role]
        with disabled(qs):
            results["groups"][role] = {"count": len(qs), **score(model, fp, x, fp_top, t)}
        with disabled([q for q in every if all(q is not g for g in qs)]):
            results["groups"][role]["only this group"] = score(model, fp, x, fp_top, t)
        print(role, results["groups"][role], flush=True)
    for name, (q, role) in roles.items():
        with disabled([q]):
            results["each"][name] = {"role": role, "bits": q.bits, **score(model, fp, x, fp_top, t)}
    (out / "sensitivity.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# {args.model}: quantized KD loss {base['kd_loss']}, agreement {base['agree']}; "
        f"all activations float: {float_acts['kd_loss']}, {float_acts['agree']}",
        "",
        "| group left float | quantizers | KD loss | agreement | only this group quantized: "
        "KD loss | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for role, r in results["groups"].items():
        o = r["only this group"]
        lines.append(
            f"| {role} | {r['count']} | {r['kd_loss']} | {r['agree']} | {o['kd_loss']} | "
            f"{o['agree']} |"
        )
    lines += ["", "| quantizer left float | role | KD loss | agreement |", "|---|---|---|---|"]
    ranked = sorted(results["each"].items(), key=lambda kv: kv[1]["kd_loss"])
    for name, r in ranked:
        lines.append(f"| {name} | {r['role']} | {r['kd_loss']} | {r['agree']} |")
    (out / "sensitivity.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'sensitivity.md'}")


if __name__ == "__main__":
    main()
