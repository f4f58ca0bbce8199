"""`prepare_for_export`: give the convolutions onnxruntime could not fuse an 8-bit output quantizer.

onnxruntime turns DQ -> Conv -> Q into QLinearConv only when a QuantizeLinear directly follows the
conv (a ReLU in between is dropped when the Q's zero point is its minimum; a ReLU6 Clip when the
Q's range lies inside it, which the exporter arranges itself: `dfq.export.clips`). A conv whose
output feeds a residual Add, a pooling layer, or a ReLU that also feeds the shortcut has no such Q,
so it would run in float. Those layers get `output_quantizer`: unsigned 8-bit when a ReLU or ReLU6
is the only consumer (a Q at zero point 0 equals ReLU then Q; for ReLU6 its range ends at 6 at
most), signed 8-bit otherwise, calibrated on calibration images.
The residual stream is already quantized where it enters each block (`dfq.quant.insert`), so a
residual Add has two dequantized operands once the conv before it has its output quantizer; a
block whose output reaches no quantizer (the last one before pooling) gets an 8-bit output
quantizer, so its Add still fuses into QLinearAdd.
The PyTorch model applies all of these too, so the fake-quant model and the ONNX graph compute the
same thing.
"""

from __future__ import annotations

import math

import onnx
import torch
from torch import nn

from dfq.export.clips import cap_clipped_ranges, clip_bounds, inside
from dfq.export.trace import consumers, is_marker, marker_tag, producers, trace_graph
from dfq.quant.attached import attach_quantizer, attached_quantizers
from dfq.quant.layers import QuantConv2d, quant_layers
from dfq.quant.quantizer import MIN_SCALE, Quantizer, all_quantizers
from dfq.quant.ranges import InputStats, init_act_scale, observe

OUTPUT_BITS = 8
OUTPUT_INIT = "mse"  # range init of the output quantizers (dfq.quant.ranges.init_act_scale)
INT32_MAX = 2**31 - 1
BIAS_CODE_LIMIT = 2**30  # headroom below INT32_MAX for float32 rounding of the step


def unfused_layers(
    model: nn.Module, input_size: tuple[int, ...]
) -> dict[str, tuple[bool, float | None]]:
    """Quantized convs that need an output quantizer, each with whether it must be signed and
    the upper bound of a Clip (ReLU6) it feeds (its range is capped there), if any."""
    proto, found = trace_graph(model, input_size, 13)
    graph = proto.graph
    writers, readers = producers(graph), consumers(graph)
    need: dict[str, tuple[bool, float | None]] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = writers.get(node.input[1])
        x = writers.get(node.input[0])
        if not (w and x and is_marker(w) and is_marker(x)):
            continue  # weight or input not quantized: no QLinearConv to aim for
        layer = marker_tag(w).rsplit(".", 1)[0]
        module = model.get_submodule(layer)
        if not isinstance(module, QuantConv2d) or module.output_quantizer is not None:
            continue
        kind = _needs_output_q(node.output[0], readers, found, graph)
        if kind is not None:
            need[layer] = kind
    return need


def _needs_output_q(
    out: str, consumers: dict, found: dict, graph: onnx.GraphProto
) -> tuple[bool, float | None] | None:
    """None when a Q already follows (maybe past a droppable ReLU, or a Clip the Q makes
    redundant, `dfq.export.clips`); else (signed, cap) of the output quantizer to add."""
    users = consumers.get(out, [])
    if len(users) != 1:
        return True, None
    if is_marker(users[0]):
        return None
    # a ReLU is Clip(0, inf): an unsigned Q after it makes it droppable, whatever its range
    bounds = (0.0, math.inf) if users[0].op_type == "Relu" else clip_bounds(users[0], graph)
    if bounds is None or bounds[0] != 0:
        return True, None
    after = consumers.get(users[0].output[0], [])
    if len(after) == 1 and is_marker(after[0]) and inside(found[marker_tag(after[0])], bounds):
        return None
    # unsigned, at most the Clip's top: equals the ReLU / Clip, then Q
    return False, bounds[1] if math.isfinite(bounds[1]) else None


def layer_input_quantizers(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, Quantizer]:
    """Layer -> the quantizer whose output is its input in the traced graph (through a constant
    Pad, as a TF-"same" conv applies after quantizing): exactly the layers whose bias the exporter
    stores as int32 on the grid `s_in * s_w` (see `dfq.export.qdq`)."""
    proto, found = trace_graph(model, input_size, 13)
    writers = producers(proto.graph)
    out = {}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        w = writers.get(node.input[1])
        x = input_marker(node.input[0], writers)
        if w is not None and x is not None and is_marker(w):
            out[marker_tag(w).rsplit(".", 1)[0]] = found[marker_tag(x)]
    return out


def input_marker(tensor: str, writers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The quantizer marker producing `tensor`, looking through Pad nodes (zero padding keeps a
    tensor on its grid)."""
    node = writers.get(tensor)
    while node is not None and node.op_type == "Pad":
        node = writers.get(node.input[0])
    return node if node is not None and is_marker(node) else None


@torch.no_grad()
def snap_biases(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Round each quantized layer's bias to its int32 grid `s_in * s_w`, as QLinearConv stores it.

    At 4 bits that grid is coarse enough that a float bias would move a few percent of the next
    layer's codes by one step; snapped, PyTorch computes what the integer kernel computes. `s_in`
    is the scale of whatever quantizer feeds the layer in the graph: its own, or its block's.
    """
    done = []
    layers = quant_layers(model)
    for name, q_in in layer_input_quantizers(model, input_size).items():
        layer = layers.get(name)
        if layer is None or layer.bias is None or not q_in.enabled:
            continue
        _fit_bias_codes(layer, q_in.scale)
        s_b = bias_scale(q_in.scale, layer.weight_quantizer.scale, MIN_SCALE)
        codes = torch.round(layer.bias / s_b).clamp(-INT32_MAX, INT32_MAX)
        layer.bias.copy_(codes * s_b)
        done.append(name)
    return done


def _fit_bias_codes(layer: nn.Module, s_in: torch.Tensor) -> None:
    """Widen the weight step of channels whose bias would overflow its int32 codes.

    A channel whose folded weights are all but zero (a BatchNorm gamma of ~0: EfficientNet-Lite0
    has dozens) gets a weight step near `MIN_SCALE`, and its bias, which is the whole output, would
    need more than 2**31 steps of `s_in * s_w`: clipped, it came out as a third of its value.
    A wider step keeps such tiny weights at the same handful of codes.
    """
    q = layer.weight_quantizer
    s_in = s_in.detach().float().clamp_min(MIN_SCALE).reshape(())
    need = layer.bias.detach().float().abs() / (s_in * BIAS_CODE_LIMIT)
    need = need.amax() if q.scale.numel() == 1 else need
    q.scale.copy_(torch.maximum(q.scale, need.reshape(q.scale.shape).to(q.scale.dtype)))


def bias_scale(s_in: torch.Tensor, s_w: torch.Tensor, min_scale: float) -> torch.Tensor:
    """The int32 bias step of a layer, float32 as the exporter writes it."""
    s_in = s_in.detach().float().clamp_min(min_scale).reshape(())
    return s_in * s_w.detach().float().clamp_min(min_scale).reshape(-1)


@torch.no_grad()
def unconsumed_block_outputs(model: nn.Module, example: torch.Tensor) -> dict[str, bool]:
    """Blocks whose input is quantized (residual blocks, `dfq.quant.attached`) but whose output
    reaches no quantizer (the last block before pooling), each with whether it is ever negative.

    Found by tensor identity in one forward pass, from the module tree, not from graph names.
    """
    blocks = attached_quantizers(model, "input")
    outputs: dict[str, torch.Tensor] = {}
    consumed: list[torch.Tensor] = []
    handles = [
        q.register_forward_pre_hook(lambda _m, inp: consumed.append(inp[0]))
        for q in all_quantizers(model)
    ]
    for name in blocks:
        handles.append(
            model.get_submodule(name).register_forward_hook(
                lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
            )
        )
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {
        name: bool(out.min() < 0)
        for name, out in outputs.items()
        if isinstance(out, torch.Tensor) and not any(out is c for c in consumed)
    }


@torch.no_grad()
def prepare_for_export(
    model: nn.Module,
    calib: torch.Tensor,
    input_size: tuple[int, ...] | None = None,
    batch_size: int = 64,
) -> list[str]:
    """Cap at 6 the ranges of quantizers reading a ReLU6 (`dfq.export.clips`), attach and
    calibrate 8-bit output quantizers where onnxruntime needs a QuantizeLinear to fuse (convs
    feeding an Add or pooling; residual blocks whose output feeds no quantizer), then snap the
    biases to their int32 grid.

    Returns the layers and blocks that got an output quantizer. Idempotent: layers and blocks that
    already carry one are left alone, and a snapped bias stays where it is.
    """
    input_size = input_size or tuple(calib.shape[1:])
    cap_clipped_ranges(model, input_size)
    added = attach_output_quantizers(model, calib, input_size, batch_size)
    snap_biases(model, input_size)
    return added


@torch.no_grad()
def attach_output_quantizers(
    model: nn.Module,
    calib: torch.Tensor,
    input_size: tuple[int, ...] | None = None,
    batch_size: int = 64,
    init: str = OUTPUT_INIT,
) -> list[str]:
    """The first half of `prepare_for_export`: the 8-bit output quantizers, their ranges set by
    `init` on `calib`, without touching the biases. Returns the layers and blocks that got one."""
    input_size = input_size or tuple(calib.shape[1:])
    need = unfused_layers(model, input_size)
    blocks = {
        name: signed
        for name, signed in unconsumed_block_outputs(model, calib[:2].float()).items()
        if name not in attached_quantizers(model, "output")
    }
    if need or blocks:
        _attach_output_quantizers(model, need, blocks, calib, batch_size, init)
    return list(need) + list(blocks)


def _attach_output_quantizers(
    model: nn.Module,
    layers: dict[str, tuple[bool, float | None]],
    blocks: dict[str, bool],
    calib: torch.Tensor,
    batch_size: int,
    init: str,
) -> None:
    names = list(layers) + list(blocks)
    _, stats = observe(model, [], list(calib.split(batch_size)), names)
    for name, (signed, cap) in layers.items():
        layer = model.get_submodule(name)
        layer.output_quantizer = _calibrated(signed, stats[name], layer.weight.device, init, cap)
    for name, signed in blocks.items():
        device = next(model.parameters()).device
        attach_quantizer(
            model.get_submodule(name), _calibrated(signed, stats[name], device, init), "output"
        )


def _calibrated(
    signed: bool, stats: InputStats, device: torch.device, init: str, cap: float | None = None
) -> Quantizer:
    """An 8-bit quantizer with its range set on the observed values; `cap`: the top of the Clip
    it stands for (values above are clipped to it first, and the range ends there at most)."""
    q = Quantizer(OUTPUT_BITS, signed).to(device)
    sample = stats.sample()
    init_act_scale(q, sample if cap is None else sample.clamp(max=cap), init)
    if cap is not None and float(q.scale) * q.qmax > cap:
        q.set_scale(cap / q.qmax)
    q.scale.requires_grad_(False)
    return q
