"""Which weights cost the most at low bits: each group of layers rounded alone, activations float.

Prepares a model with the shipped recipe on a saved calibration set (activations left float), rounds
its weights with nearest rounding and with GPTQ, then puts one group's rounded weights (depthwise
convs, 1x1 expansions read by an activation, 1x1 projections, the rest) into the float model at a
time and records the distillation loss to the FP model and the argmax agreement on a held-out set
(a saved synthetic set, labelled by the FP model: data-free). Writes OUT/weight_groups.json.

    python tools/bench_weight_groups.py --model timm:tf_efficientnet_lite0 \\
        --calib runs/lite0_eq/sets/synth-default-s0.pt \\
        --heldout runs/bench_lite0/sets/synth-bn-s0.pt --out runs/weight_groups_lite0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_quant import fp_model
from bench_sensitivity import add_probe_args, load_probe, score
from recipe_args import add_recipe_changes, recipe_changes
from torch import nn

from dfq.quant.equalize import clipped_layers
from dfq.quant.gptq import gptq
from dfq.quant.insert import prepare
from dfq.quant.layers import quant_layers
from dfq.quant.quantizer import all_quantizers, disabled
from dfq.run.recipe import quant_config


def weight_role(name: str, layer: nn.Module, clipped: dict[str, float]) -> str:
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:
        return "depthwise"
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
        return "1x1 read by an activation" if name in clipped else "1x1 linear (projection)"
    return "other (stem, classifier)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(ap)
    add_recipe_changes(ap, "quant", "the quantized model (default: the recipe's, W4)")
    ap.add_argument("--out", default="runs/weight_groups")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fp, dc, calib, x, top = load_probe(args)
    cfg = quant_config(None, dc, recipe_changes(args.quant), device="cpu")
    model, _ = fp_model(args.model)
    model.eval()
    prepare(model, cfg, list(calib.split(cfg.calib_batch_size)))
    layers = quant_layers(model)
    clipped = clipped_layers(model)
    kept = {n: (m.weight.detach().clone(), _bias(m)) for n, m in layers.items()}
    with torch.no_grad():
        nearest = {n: (m.weight_quantizer(m.weight).detach(), _bias(m)) for n, m in layers.items()}
    gptq(model, calib, cfg.calib_batch_size, cfg.gptq_damp, cfg.gptq_images, False)
    rounded = {
        "nearest": nearest,
        "gptq": {n: (m.weight.detach().clone(), _bias(m)) for n, m in layers.items()},
    }
    groups: dict[str, list[str]] = {}
    for n, m in layers.items():
        groups.setdefault(weight_role(n, m, clipped), []).append(n)
    t = cfg.kd_temperature
    results: dict = {"bits": cfg.wbits, "groups": {r: len(ns) for r, ns in groups.items()}}
    with disabled(all_quantizers(model)):
        for how, weights in rounded.items():
            _load(layers, weights, kept, set(layers))
            results[f"all, {how}"] = score(model, fp, x, top, t)
            for role, names in groups.items():
                _load(layers, weights, kept, set(names))
                results[f"only {role}, {how}"] = score(model, fp, x, top, t)
                print(how, role, results[f"only {role}, {how}"], flush=True)
    (out / "weight_groups.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def _bias(m: nn.Module) -> torch.Tensor | None:
    return None if m.bias is None else m.bias.detach().clone()


@torch.no_grad()
def _load(layers: dict, chosen: dict, float_weights: dict, names: set[str]) -> None:
    """`chosen` weights in the layers of `names`, the float ones elsewhere."""
    for n, m in layers.items():
        w, b = (chosen if n in names else float_weights)[n]
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b)


if __name__ == "__main__":
    main()
