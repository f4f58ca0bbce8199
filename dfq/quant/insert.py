"""Turn a float model into a fake-quantized one: fold BN, swap layers, attach quantizers, init
ranges.

Where tensors are quantized is set by the protocol (DESIGN section 2):
- `deploy` (default): the input of every conv / linear, as an integer runtime executes; first conv
  and last linear at `first_last_bits` (8), the image at 8 bits; the residual stream quantized once
  at each block's entry, so a block's first conv and its shortcut read the same quantized tensor.
- `genie` (Genie, BRECQ, QDrop tables): as deploy, but the first layer's input (the image) stays
  float with 8-bit weights, the second layer's input is 8-bit and the last layer W8A8.
- `gdfq` (GDFQ, Qimera, IntraQ, SynQ tables): every conv / linear at the target weight bits, and
  activations quantized after every ReLU / ReLU6 (the post-add ReLU, the residual stream, included);
  the image and anything not produced by an activation (e.g. the pooled input of the last linear)
  stay float.
Modules with parameters that cannot be quantized are returned by name so the report lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from dfq.models.blocks import units
from dfq.quant.attached import attach_quantizer, attached_quantizers
from dfq.quant.equalize import equalize_clips, equalize_streams
from dfq.quant.fold import fold_bn
from dfq.quant.layers import QUANT_LAYERS, quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import Quantizer
from dfq.quant.ranges import InputStats, init_act_scale, init_weight_scale, observe
from dfq.quant.replace import replace_modules

IMAGE_BITS = 8  # the image entering the first conv under deploy with first_last_bits "same"
ACTIVATIONS = (nn.ReLU, nn.ReLU6)
# Subclasses whose `forward` differs only for TorchScript, so the quantized layer computes the same.
SAME_FORWARD = {"timm.layers.linear.Linear"}
# Convolutions with TF "same" padding: static at a fixed input size, applied by QuantConv2d.
SAME_PADDING = {"timm.layers.conv2d_same.Conv2dSame"}


@dataclass
class PrepareResult:
    folded: list[tuple[str, str]] = field(default_factory=list)
    bits: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # layer -> (w, a)
    block_inputs: dict[str, int] = field(default_factory=dict)  # block -> activation bits
    activations: dict[str, int] = field(default_factory=dict)  # activation module -> bits
    unquantized: list[str] = field(default_factory=list)  # "name (Type): why"
    equalized: list[dict] = field(default_factory=list)  # residual streams (equalize.py)
    equalized_clips: list[dict] = field(default_factory=list)  # activations (equalize.py)


def _qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def quantizable(module: nn.Module) -> bool:
    """Registered layer types, and subclasses that compute the same `forward` (e.g. timm's Linear)
    or a known static-padding variant (timm's Conv2dSame)."""
    cls, name = type(module), _qualname(module)
    for float_type in QUANT_LAYERS:
        if isinstance(module, float_type) and (
            name in SAME_FORWARD or name in SAME_PADDING or cls.forward is float_type.forward
        ):
            return not (isinstance(module, nn.Conv2d) and module.padding_mode != "zeros")
    return False


def unquantizable(model: nn.Module, lone_bn: list[str]) -> list[str]:
    """Leaf modules that hold parameters but stay float, each with the reason."""
    out = [
        f"{n} ({type(model.get_submodule(n)).__name__}): BatchNorm without a conv right before it"
        for n in lone_bn
    ]
    for name, m in model.named_modules():
        if name in lone_bn or quantizable(m) or next(m.children(), None) is not None:
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out.append(f"{name} ({type(m).__name__}): no quantized version of this layer type")
    return out


def layer_bits(order: list[str], cfg: QuantConfig) -> dict[str, tuple[int, int | None]]:
    """(weight bits, input bits or None) per layer in call order, by protocol."""
    w, a, fl = cfg.wbits, cfg.abits, cfg.edge_bits
    if cfg.protocol == "gdfq":
        bits: dict[str, tuple[int, int | None]] = {n: (w, None) for n in order}
        if order and fl != "same":
            bits[order[0]] = bits[order[-1]] = (fl, None)
        return bits
    bits = {n: (w, a) for n in order}
    if not order:
        return bits
    if cfg.protocol == "genie":
        if len(order) > 1:
            bits[order[1]] = (w, IMAGE_BITS)
        bits[order[0]] = (w if fl == "same" else fl, None)
        if len(order) > 1:
            bits[order[-1]] = (w, a) if fl == "same" else (fl, fl)
        return bits
    if fl == "same":
        bits[order[0]] = (w, max(a, IMAGE_BITS))
    else:
        bits[order[0]] = bits[order[-1]] = (fl, fl)
    return bits


@torch.no_grad()
def block_entries(
    model: nn.Module, layers: list[str], example: torch.Tensor
) -> dict[str, list[str]]:
    """Block -> the layers inside it that read the block's own input tensor (its entry layers).

    Found by identity of the tensors passed in one forward pass (kept alive, with their version
    counters, so neither a recycled id nor an in-place change fools it).
    """
    blocks = [u for u in units(model) if not quantizable(model.get_submodule(u))]
    seen: dict[str, tuple[torch.Tensor, int]] = {}
    handles = []
    for name in blocks + layers:

        def hook(_m: nn.Module, inp: tuple, name: str = name) -> None:
            if inp and isinstance(inp[0], torch.Tensor) and name not in seen:
                seen[name] = (inp[0], inp[0]._version)

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, list[str]] = {}
    for block in blocks:
        if block not in seen:
            continue
        x, version = seen[block]
        entries = [
            n
            for n in layers
            if n.startswith(block + ".") and n in seen and seen[n][0] is x and seen[n][1] == version
        ]
        if entries:
            out[block] = entries
    return out


def same_padding(module: nn.Conv2d, input_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """TF "same" padding (left, right, top, bottom) of `module` for an input (C, H, W)."""
    pads = []
    for size, k, s, d in zip(
        input_shape[-2:], module.kernel_size, module.stride, module.dilation, strict=True
    ):
        pads.append(max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0))
    (ph, pw) = pads
    return (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)


@torch.no_grad()
def prepare(model: nn.Module, cfg: QuantConfig, batches: list[torch.Tensor]) -> PrepareResult:
    """Fold, quantize and range-initialize `model` in place (eval mode) on normalized `batches`."""
    model.eval()
    fold = fold_bn(model, batches[0][:2])
    equalized = equalize_streams(model, batches) if cfg.equalize_streams else []
    clips = []
    if cfg.equalize_clips != "none":
        clips = equalize_clips(model, batches, cfg.equalize_clips, cfg.abits)
    names = [n for n, m in model.named_modules() if quantizable(m)]
    acts = (
        [n for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
        if cfg.protocol == "gdfq"
        else []
    )
    entries = block_entries(model, names, batches[0][:2]) if cfg.protocol != "gdfq" else {}
    stats, act_stats = observe(model, names + list(entries), batches, acts)
    order = sorted((n for n in names if n in stats), key=lambda n: stats[n].order)
    result = PrepareResult(
        folded=fold.folded,
        bits=layer_bits(order, cfg),
        equalized=equalized,
        equalized_clips=clips,
    )
    result.unquantized = unquantizable(model, fold.unfolded)
    result.unquantized += [
        f"{n} ({type(model.get_submodule(n)).__name__}): never called in forward"
        for n in names
        if n not in stats
    ]
    result.block_inputs = _block_input_bits(entries, result.bits)
    layer_inputs = {n: ab for n, (_, ab) in result.bits.items()}
    for entry_layers in (entries[b] for b in result.block_inputs):
        for n in entry_layers:
            layer_inputs[n] = None  # the block's quantizer already feeds them
    result.activations = {n: cfg.abits for n in acts if n in act_stats}

    def make(name: str, m: nn.Module) -> nn.Module:
        pad = same_padding(m, stats[name].shape) if _qualname(m) in SAME_PADDING else None
        return QUANT_LAYERS[_float_type(m)].from_float(
            m,
            result.bits[name][0],
            layer_inputs[name],
            input_signed=stats[name].min < 0,
            same_pad=pad,
        )

    replace_modules(model, lambda n, m: n in result.bits, make)
    for name, layer in quant_layers(model).items():
        init_weight_scale(layer.weight_quantizer, layer.weight, cfg.weight_init)
        if layer.input_quantizer is not None:
            _init(layer.input_quantizer, stats[name], cfg)
    for block, bits in result.block_inputs.items():
        _attach(model, block, "input", bits, stats[block], cfg)
    for act, bits in result.activations.items():
        _attach(model, act, "output", bits, act_stats[act], cfg)
    return result


def _block_input_bits(
    entries: dict[str, list[str]], bits: dict[str, tuple[int, int | None]]
) -> dict[str, int]:
    """A block gets an input quantizer when all its entry layers quantize their input; at the
    widest of their bits (they normally agree)."""
    out = {}
    for block, layers in entries.items():
        widths = [bits[n][1] for n in layers if n in bits]
        if widths and all(w is not None for w in widths):
            out[block] = max(widths)
    return out


def _init(q: Quantizer, stats: InputStats, cfg: QuantConfig) -> None:
    init_act_scale(q, stats.sample(), cfg.act_init, cfg.act_percentile)


def _attach(
    model: nn.Module, name: str, where: str, bits: int, stats: InputStats, cfg: QuantConfig
) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    q = Quantizer(bits, signed=stats.min < 0).to(device)
    _init(q, stats, cfg)
    attach_quantizer(model.get_submodule(name), q, where)


def _float_type(m: nn.Module) -> type[nn.Module]:
    return next(t for t in QUANT_LAYERS if isinstance(m, t))


@torch.no_grad()
def reinit_activation_ranges(
    model: nn.Module, cfg: QuantConfig, batches: list[torch.Tensor]
) -> None:
    """Initialize every activation step size of a quantized model again, on other images (e.g. a
    student first set up on noise, once synthetic images exist), as each tensor arrives there."""
    layers = {
        n: m.input_quantizer
        for n, m in quant_layers(model).items()
        if m.input_quantizer is not None
    }
    blocks = attached_quantizers(model, "input")
    acts = attached_quantizers(model, "output")
    stats, out_stats = observe(model, list(layers) + list(blocks), batches, list(acts))
    for name, q in [*layers.items(), *blocks.items()]:
        if name in stats:
            _init(q, stats[name], cfg)
    for name, q in acts.items():
        if name in out_stats:
            _init(q, out_stats[name], cfg)
