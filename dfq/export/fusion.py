"""`prepare_for_export`: give the convolutions onnxruntime could not fuse an 8-bit output quantizer.

onnxruntime turns DQ -> Conv -> Q into QLinearConv only when a QuantizeLinear directly follows the
conv (a ReLU in between is dropped when the Q's zero point is its minimum). A conv whose output
feeds a residual Add, a pooling layer, or a ReLU that also feeds the shortcut has no such Q, so it
would run in float. Those layers get `output_quantizer`: unsigned 8-bit when a ReLU is the only
consumer (a Q at zero point 0 equals ReLU then Q), signed 8-bit otherwise, calibrated on calibration
images.
A residual block whose shortcut adds its float input gets a block-input quantizer
(`dfq.quant.block_input`) copied from the 8-bit quantizer its first conv already applies to that
input: the conv sees the same codes, the Add gets two dequantized operands and fuses into QLinearAdd,
and the layout stays NHWC across the block. Only an 8-bit quantizer is copied: where the block's
layers quantize its input to fewer bits, the shortcut stays float rather than lose precision.
The PyTorch model applies all of these too, so the fake-quant model and the ONNX graph compute the
same thing.
"""
from __future__ import annotations

import onnx
import torch
from torch import nn

from dfq.export.trace import MARKER_DOMAIN, MARKER_OP, quantizers, trace_graph
from dfq.quant.block_input import add_block_input_quantizer, remove_block_input_quantizer
from dfq.quant.layers import QuantConv2d, quant_layers
from dfq.quant.quantizer import MIN_SCALE, Quantizer
from dfq.quant.ranges import InputStats, init_act_scale

OUTPUT_BITS = 8


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _is_marker(node: onnx.NodeProto) -> bool:
    return node.domain == MARKER_DOMAIN and node.op_type == MARKER_OP


def _tag(node: onnx.NodeProto) -> str:
    return next(a.s.decode() for a in node.attribute if a.name == "tag")


def unfused_layers(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, bool]:
    """Quantized convs that need an output quantizer, each with whether it must be signed."""
    proto, found = trace_graph(model, input_size, 13)
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    need: dict[str, bool] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        w = producers.get(node.input[1])
        x = producers.get(node.input[0])
        if not (w and x and _is_marker(w) and _is_marker(x)):
            continue  # weight or input not quantized: no QLinearConv to aim for
        layer = _tag(w).rsplit(".", 1)[0]
        module = model.get_submodule(layer)
        if not isinstance(module, QuantConv2d) or module.output_quantizer is not None:
            continue
        signed = _needs_output_q(node.output[0], consumers, found)
        if signed is not None:
            need[layer] = signed
    return need


def _needs_output_q(out: str, consumers: dict, found: dict) -> bool | None:
    """None when a Q already follows (maybe past a droppable ReLU); else the signedness to add."""
    users = consumers.get(out, [])
    if len(users) == 1 and _is_marker(users[0]):
        return None
    if len(users) == 1 and users[0].op_type == "Relu":
        after = consumers.get(users[0].output[0], [])
        if len(after) == 1 and _is_marker(after[0]) and not found[_tag(after[0])].signed:
            return None
        return False
    return True


@torch.no_grad()
def snap_biases(model: nn.Module) -> list[str]:
    """Round each quantized layer's bias to its int32 grid `s_in * s_w`, as QLinearConv stores it.

    At 4 bits that grid is coarse enough that a float bias would move a few percent of the next
    layer's codes by one step; snapped, PyTorch computes what the integer kernel computes.
    """
    done = []
    for name, layer in quant_layers(model).items():
        if layer.bias is None or layer.input_quantizer is None or not layer.input_quantizer.enabled:
            continue
        s_b = bias_scale(layer.input_quantizer.scale, layer.weight_quantizer.scale, MIN_SCALE)
        layer.bias.copy_(torch.round(layer.bias / s_b) * s_b)
        done.append(name)
    return done


def bias_scale(s_in: torch.Tensor, s_w: torch.Tensor, min_scale: float) -> torch.Tensor:
    """The int32 bias step of a layer, float32 as the exporter writes it."""
    s_in = s_in.detach().float().clamp_min(min_scale).reshape(())
    return (s_in * s_w.detach().float().clamp_min(min_scale).reshape(-1))


def block_inputs_to_quantize(model: nn.Module, input_size: tuple[int, ...]
                             ) -> dict[str, list[str]]:
    """Residual blocks that keep a float tensor between integer kernels, each with the 8-bit input
    quantizers (marker tags) its layers apply to the block's input.

    A block qualifies when its input (the one tensor it reads from outside) feeds its residual Add
    in float, or feeds several quantizers: then neither the Add before nor the one after can fuse.
    """
    proto, found = trace_graph(model, input_size, 13)
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    const = {t.name for t in graph.initializer}
    for n in graph.node:  # folded constants reach the graph through Identity / Constant nodes
        if all(i in const for i in n.input):
            const.update(n.output)
    out: dict[str, list[str]] = {}
    for node in graph.node:
        parts = node.name.split("/")
        if node.op_type != "Add" or len(parts) < 3:
            continue
        block, scope = parts[-2], node.name.rsplit("/", 1)[0] + "/"
        inside = [n for n in graph.node if n.name.startswith(scope)]
        outer = {i for n in inside for i in n.input if i in producers and i not in const
                 and not producers[i].name.startswith(scope)}
        if len(outer) != 1:
            continue
        x = outer.pop()
        if _is_marker(producers[x]):
            continue  # already quantized (by this block's input quantizer once it has one)
        marks = [c for c in consumers.get(x, []) if _is_marker(c) and c.name.startswith(scope)]
        tags = [_tag(c) for c in marks]
        grids = {(found[t].bits, found[t].signed, found[t].channel_axis) for t in tags}
        if not tags or grids != {(8, found[tags[0]].signed, None)}:
            continue  # nothing to copy, or inputs narrower than 8 bits: leave the block float
        if x in node.input or len(marks) > 1:
            out[block] = tags
    return out


@torch.no_grad()
def _attach_block_inputs(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Give each such block a copy of its first input quantizer and move its other input
    quantizers onto the same grid (they quantize the same tensor); keep only blocks where that
    took effect, i.e. the block's first argument was that input."""
    wanted = block_inputs_to_quantize(model, input_size)
    if not wanted:
        return []
    found = quantizers(model)
    saved = {}
    for block, tags in wanted.items():
        src = found[tags[0]]
        q = Quantizer(src.bits, src.signed).to(src.scale.device)
        q.scale.copy_(src.scale.detach().reshape(()))
        q.scale.requires_grad_(False)
        for t in tags[1:]:
            saved[t] = found[t].scale.detach().clone()
            found[t].scale.copy_(q.scale)
        add_block_input_quantizer(model.get_submodule(block), q)
    left = block_inputs_to_quantize(model, input_size)
    for block in left:
        if block in wanted:
            remove_block_input_quantizer(model.get_submodule(block))
            for t in wanted[block][1:]:
                found[t].scale.copy_(saved[t])
    return [b for b in wanted if b not in left]


@torch.no_grad()
def prepare_for_export(model: nn.Module, calib: torch.Tensor,
                       input_size: tuple[int, ...] | None = None,
                       batch_size: int = 64) -> list[str]:
    """Attach and calibrate output quantizers where onnxruntime needs them, give float-shortcut
    blocks their input quantizer, then snap the biases.

    Returns the layers that got an output quantizer and the blocks that got an input quantizer.
    Idempotent: layers and blocks that already carry one are left alone, and a snapped bias stays
    where it is.
    """
    input_size = input_size or tuple(calib.shape[1:])
    need = unfused_layers(model, input_size)
    if need:
        _attach_output_quantizers(model, need, calib, batch_size)
    blocks = _attach_block_inputs(model, input_size)
    snap_biases(model)
    return list(need) + blocks


def _attach_output_quantizers(model: nn.Module, need: dict[str, bool], calib: torch.Tensor,
                              batch_size: int) -> None:
    stats = {name: InputStats(order=i) for i, name in enumerate(need)}
    gen = torch.Generator().manual_seed(0)
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: stats[n].add(out, gen)) for n in need]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(calib), batch_size):
            model(calib[i:i + batch_size].float())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, signed in need.items():
        layer = model.get_submodule(name)
        q = Quantizer(OUTPUT_BITS, signed).to(layer.weight.device)
        init_act_scale(q, stats[name].sample(), "mse")
        q.scale.requires_grad_(False)
        layer.output_quantizer = q
