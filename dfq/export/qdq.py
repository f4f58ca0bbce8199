"""Lower `dfq::Quant` markers to QuantizeLinear / DequantizeLinear that onnxruntime fuses.

Choices forced by onnxruntime's QDQ fusion (DQ -> Conv -> Q becomes QLinearConv only when the input
and output Q types match and every input, bias included, comes from a DequantizeLinear):
- activations are uint8 everywhere: an unsigned grid uses zero point 0, a signed grid zero point 128
  (the same integers shifted, so numerics equal the int8 / zp 0 grid of the fake-quant model);
- weights are int8 initializers with per-axis DequantizeLinear, zero point 0, or
  (`unsigned_weights`) uint8 codes + 128 at zero point 128: onnxruntime's U8S8 kernels on x86
  CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) add pairs of uint8 x int8 products in int16
  (VPMADDUBSW), which saturates (int8 weights gave 73% argmax agreement with PyTorch at W8A8
  there); its U8U8 kernels widen first and are exact everywhere, slower where VNNI exists
  (`ExportConfig.weight_type`);
- a float bias next to DQ inputs becomes int32 with scale s_in * s_w (`prepare.snap_biases` puts the
  PyTorch bias on that grid first, so both compute the same);
- grids narrower than 8 bits keep their levels with Q -> DQ -> Clip -> Q -> DQ: the first Q fuses
  into the producing QLinearConv, the Clip restores the 4-bit range, the graph equals fake quant.
With `int4`, 4-bit tensors use the native INT4 / UINT4 types of opset 21 instead (no CPU kernel
fuses them).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dfq.errors import DfqError
from dfq.export.trace import MARKER_DOMAIN, consumers, is_marker, marker_tag, producers
from dfq.quant.quantizer import MIN_SCALE

U8_SIGNED_ZP = 128


class _Graph:
    """Small helpers over a GraphProto: unique initializers and consumer lookup."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.g = model.graph
        self.inits = {t.name: t for t in self.g.initializer}

    def const(self, name: str, array: np.ndarray, dtype: int | None = None) -> str:
        if name not in self.inits:
            if dtype is None:
                t = numpy_helper.from_array(array, name)
            else:
                t = helper.make_tensor(name, dtype, array.shape, array.flatten().tolist())
            self.g.initializer.append(t)
            self.inits[name] = t
        return name

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [n for n in self.g.node if tensor in n.input]

    def drop_unused_initializers(self) -> None:
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)
        self.inits = {t.name: t for t in keep}


def _scale(q: nn.Module) -> np.ndarray:
    return q.scale.detach().float().clamp_min(MIN_SCALE).cpu().numpy().astype(np.float32)


def lower_markers(
    model: onnx.ModelProto,
    found: dict[str, nn.Module],
    *,
    int4: bool,
    unsigned_weights: bool,
) -> None:
    """Replace every marker in place; afterwards the graph holds only standard ONNX operators.
    The weight container (`unsigned_weights`) is the caller's choice: `ExportConfig.weight_type`."""
    graph = _Graph(model)
    new_nodes: list[onnx.NodeProto] = []
    grids: dict[str, tuple] = {}  # activation marker output -> its grid
    for node in graph.g.node:
        if not is_marker(node):
            new_nodes.append(node)
            continue
        tag = marker_tag(node)
        q = found[tag]
        src, dst = node.input[0], node.output[0]
        if src in graph.inits:
            new_nodes += _weight_nodes(graph, tag, q, src, dst, int4, unsigned_weights)
            continue
        grid = (q.bits, q.signed, _scale(q).tobytes())
        if grids.get(src) == grid:  # the same grid twice in a row is the identity
            new_nodes.append(helper.make_node("Identity", [src], [dst], name=f"{tag}/Identity"))
        else:
            new_nodes += _activation_nodes(graph, tag, q, src, dst, int4)
        grids[dst] = grid
    del graph.g.node[:]
    graph.g.node.extend(new_nodes)
    _requantize_after_pads(graph)
    _quantize_biases(graph)
    graph.drop_unused_initializers()
    keep = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _weight_nodes(
    graph: _Graph, tag: str, q: nn.Module, src: str, dst: str, int4: bool, unsigned: bool
) -> list[onnx.NodeProto]:
    """A constant weight becomes integer codes plus one (per-axis) DequantizeLinear."""
    w = torch.from_numpy(numpy_helper.to_array(graph.inits[src]).copy())
    if q.bits > 8:
        raise DfqError(
            f"{tag}: {q.bits}-bit weights do not fit the int8 QDQ format; use 8 bits or fewer"
        )
    with torch.no_grad():
        codes = q.integer(w).numpy()
    scale = _scale(q)
    native = int4 and q.bits <= 4
    if native or not unsigned:
        codes = codes.astype(np.int8 if q.signed else np.uint8)
        zp = np.zeros(scale.shape, np.int8 if q.signed else np.uint8)
    else:  # uint8 codes, signed ones shifted by 128: the U8U8 kernels (module docstring)
        shift = U8_SIGNED_ZP if q.signed else 0
        codes = (codes.astype(np.int32) + shift).astype(np.uint8)
        zp = np.full(scale.shape, shift, np.uint8)
    # only native 4-bit types need naming; otherwise the numpy dtype is the ONNX type
    wtype = (TensorProto.INT4 if q.signed else TensorProto.UINT4) if native else None
    names = [
        graph.const(f"{tag}.codes", codes, wtype),
        graph.const(f"{tag}.scale", scale),
        graph.const(f"{tag}.zero_point", zp, wtype),
    ]
    attrs = {"axis": q.channel_axis} if q.channel_axis is not None else {}
    return [
        helper.make_node("DequantizeLinear", names, [dst], name=f"{tag}/DequantizeLinear", **attrs)
    ]


def _activation_nodes(
    graph: _Graph, tag: str, q: nn.Module, src: str, dst: str, int4: bool
) -> list[onnx.NodeProto]:
    """Per-tensor Q -> DQ (plus Clip -> Q -> DQ for grids narrower than their 8-bit container)."""
    if q.channel_axis is not None:
        raise DfqError(f"{tag}: per-channel activation quantizers cannot run on QLinearConv")
    if q.bits > 8:
        raise DfqError(f"{tag}: {q.bits}-bit activations do not fit the 8-bit QDQ format")
    s = graph.const(f"{tag}.scale", _scale(q).reshape(()))
    if int4 and q.bits <= 4:
        dtype = TensorProto.INT4 if q.signed else TensorProto.UINT4
        zp = graph.const(f"{tag}.zero_point", np.zeros((), np.int8), dtype)
        return [
            helper.make_node("QuantizeLinear", [src, s, zp], [f"{tag}.q"], name=f"{tag}/Q"),
            helper.make_node("DequantizeLinear", [f"{tag}.q", s, zp], [dst], name=f"{tag}/DQ"),
        ]
    zp = graph.const(f"{tag}.zero_point", np.array(U8_SIGNED_ZP if q.signed else 0, np.uint8))
    if q.bits == 8:
        return [
            helper.make_node("QuantizeLinear", [src, s, zp], [f"{tag}.q"], name=f"{tag}/Q"),
            helper.make_node("DequantizeLinear", [f"{tag}.q", s, zp], [dst], name=f"{tag}/DQ"),
        ]
    step = float(_scale(q).reshape(()))
    lo = graph.const(f"{tag}.clip_min", np.array(q.qmin * step, np.float32))
    hi = graph.const(f"{tag}.clip_max", np.array(q.qmax * step, np.float32))
    return [
        helper.make_node("QuantizeLinear", [src, s, zp], [f"{tag}.q8"], name=f"{tag}/Q8"),
        helper.make_node(
            "DequantizeLinear", [f"{tag}.q8", s, zp], [f"{tag}.dq8"], name=f"{tag}/DQ8"
        ),
        helper.make_node("Clip", [f"{tag}.dq8", lo, hi], [f"{tag}.clip"], name=f"{tag}/Clip"),
        helper.make_node("QuantizeLinear", [f"{tag}.clip", s, zp], [f"{tag}.q"], name=f"{tag}/Q"),
        helper.make_node("DequantizeLinear", [f"{tag}.q", s, zp], [dst], name=f"{tag}/DQ"),
    ]


SHAPE_OPS = ("Slice", "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def _requantize_after_pads(graph: _Graph) -> None:
    """A zero Pad between a DequantizeLinear and an Add or Conv (an option-A shortcut, a TF-"same"
    convolution) gets a Q -> DQ pair on the same grid after it: exact (zeros and the values it
    keeps are on that grid), and the Add / Conv then reads a DequantizeLinear, so onnxruntime
    fuses it into QLinearAdd / QLinearConv instead of running it in float."""
    writers, readers = producers(graph.g), consumers(graph.g)
    out: list[onnx.NodeProto] = []
    for node in graph.g.node:
        out.append(node)
        dq = _dq_before(node, writers) if node.op_type == "Pad" and _zero_pad(node, graph) else None
        users = readers.get(node.output[0], [])
        if dq is None or not any(u.op_type in ("Add", "Conv") for u in users):
            continue
        scale, zp = dq.input[1], dq.input[2] if len(dq.input) > 2 else ""
        q_out, dq_out = f"{node.name}/requantized.q", f"{node.name}/requantized"
        out += [
            helper.make_node(
                "QuantizeLinear", [node.output[0], scale, zp], [q_out], name=f"{node.name}/Q"
            ),
            helper.make_node(
                "DequantizeLinear", [q_out, scale, zp], [dq_out], name=f"{node.name}/DQ"
            ),
        ]
        for user in users:
            for k, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[k] = dq_out
    del graph.g.node[:]
    graph.g.node.extend(out)


def _dq_before(node: onnx.NodeProto, writers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The per-tensor activation DequantizeLinear `node` reads through shape-only ops, if any."""
    src = writers.get(node.input[0])
    while src is not None and src.op_type in SHAPE_OPS:
        src = writers.get(src.input[0])
    if (
        src is None
        or src.op_type != "DequantizeLinear"
        or any(a.name == "axis" for a in src.attribute)
    ):
        return None
    return src


def _zero_pad(node: onnx.NodeProto, graph: _Graph) -> bool:
    """A constant-mode Pad whose fill value is 0 (or absent)."""
    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode != "constant":
        return False
    if len(node.input) > 2 and node.input[2]:
        value = graph.inits.get(node.input[2])
        return value is not None and float(numpy_helper.to_array(value).reshape(-1)[0]) == 0.0
    return True


def _quantize_biases(graph: _Graph) -> None:
    """Conv / Gemm with DQ input and weight and a float bias: store the bias as int32 + DQ."""
    writers = producers(graph.g)
    extra: list[onnx.NodeProto] = []
    for node in graph.g.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        dq_x, dq_w = writers.get(node.input[0]), writers.get(node.input[1])
        while dq_x is not None and dq_x.op_type == "Pad":  # zero padding stays on the grid
            dq_x = writers.get(dq_x.input[0])
        bias = node.input[2]
        if not (
            dq_x
            and dq_w
            and dq_x.op_type == dq_w.op_type == "DequantizeLinear"
            and bias in graph.inits
        ):
            continue
        s_x = numpy_helper.to_array(graph.inits[dq_x.input[1]])
        s_w = numpy_helper.to_array(graph.inits[dq_w.input[1]])
        if s_x.size != 1:
            continue
        b = numpy_helper.to_array(graph.inits[bias]).astype(np.float32)
        # float32 as `fusion.snap_biases` computes it, so a snapped bias maps to exact codes
        s_b = np.broadcast_to(
            np.float32(s_x.reshape(())) * s_w.reshape(-1).astype(np.float32), b.shape
        ).astype(np.float32)
        # 2**31 - 128: the largest float32 below 2**31 (2**31 - 1 rounds up and wraps to -2**31)
        codes = np.clip(np.round(b / s_b), -(2**31 - 128), 2**31 - 128).astype(np.int32)
        names = [
            graph.const(f"{bias}.codes", codes),
            graph.const(f"{bias}.scale", s_b),
            graph.const(f"{bias}.zero_point", np.zeros(b.shape, np.int32)),
        ]
        out = f"{bias}.dq"
        extra.append(
            helper.make_node(
                "DequantizeLinear", names, [out], name=f"{bias}/DequantizeLinear", axis=0
            )
        )
        node.input[2] = out
    # DequantizeLinear nodes of constants can go first: the graph stays topologically sorted.
    nodes = extra + list(graph.g.node)
    del graph.g.node[:]
    graph.g.node.extend(nodes)
