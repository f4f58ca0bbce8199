"""Clips (ReLU6) that an unsigned quantizer next to them makes redundant.

An unsigned quantizer clamps to [0, qmax * s]. A Clip(lo, hi) with lo <= 0 and qmax * s <= hi
therefore changes nothing when that quantizer reads its output (the quantizer's clamps are the
tighter ones) or when it reads that quantizer's output (the values are inside already). Such a
Clip between a convolution and the next layer's input quantizer keeps onnxruntime from fusing the
convolution into QLinearConv: onnxruntime drops a Clip before a QuantizeLinear only when the Q's
whole 8-bit range lies inside the Clip's, which a 4-bit grid in its 8-bit container never does.
So the exporter drops these Clips itself, and `dfq.export.fusion` gives their convolutions no
extra output quantizer. A quantizer that reads a ReLU6 with a range wider than 6 (a step size
grown in fine-tuning) is first capped at 6: no value above 6 reaches it.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from dfq.export.trace import consumers, is_marker, marker_tag, producers, trace_graph

RANGE_TOLERANCE = 1e-6  # relative: float32 rounding of hi / qmax * qmax


def clip_bounds(node: onnx.NodeProto, graph: onnx.GraphProto) -> tuple[float, float] | None:
    """(lo, hi) of a Clip whose bounds are constants (opset 11+ inputs or opset 6 attributes),
    None when they are not."""
    if node.op_type != "Clip":
        return None
    if len(node.input) == 1 and node.attribute:  # opset 6
        attrs = {a.name: a.f for a in node.attribute}
        return attrs.get("min", -np.inf), attrs.get("max", np.inf)
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        name = node.input[i] if len(node.input) > i else ""
        value = default if not name else _constant(name, graph)
        if value is None:
            return None
        bounds.append(float(value))
    return bounds[0], bounds[1]


def _constant(name: str, graph: onnx.GraphProto) -> float | None:
    for t in graph.initializer:
        if t.name == name:
            return float(numpy_helper.to_array(t).reshape(-1)[0])
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            value = next(a for a in n.attribute if a.name == "value")
            return float(numpy_helper.to_array(value.t).reshape(-1)[0])
    return None


def inside(q: nn.Module, bounds: tuple[float, float]) -> bool:
    """Whether unsigned `q`'s clamp range [0, qmax * s] lies within the Clip's (lo <= 0)."""
    lo, hi = bounds
    if q.signed or lo > 0:
        return False
    top = float(q.scale.detach().float().max()) * q.qmax
    return top <= hi * (1 + RANGE_TOLERANCE)


def redundant_clips(graph: onnx.GraphProto, found: dict[str, nn.Module]) -> list[onnx.NodeProto]:
    """The Clips of a traced graph (with markers) that an adjacent unsigned quantizer makes
    redundant: the Clip's only consumer is that quantizer, or its input is that quantizer's."""
    writers, readers = producers(graph), consumers(graph)
    out = []
    for node in graph.node:
        bounds = clip_bounds(node, graph)
        if bounds is None:
            continue
        users = readers.get(node.output[0], [])
        before = writers.get(node.input[0])
        after = users[0] if len(users) == 1 else None
        if any(
            m is not None and is_marker(m) and inside(found[marker_tag(m)], bounds)
            for m in (before, after)
        ):
            out.append(node)
    return out


def drop_redundant_clips(proto: onnx.ModelProto, found: dict[str, nn.Module]) -> int:
    """Remove the redundant Clips from a traced graph (each one's readers read its input);
    returns how many. A Clip that is a graph output stays."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    drop = [n for n in redundant_clips(graph, found) if n.output[0] not in outputs]
    for node in drop:
        src, dst = node.input[0], node.output[0]
        for other in graph.node:
            for i, name in enumerate(other.input):
                if name == dst:
                    other.input[i] = src
        graph.node.remove(node)
    return len(drop)


@torch.no_grad()
def cap_clipped_ranges(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """Narrow each unsigned activation quantizer that reads a Clip(lo <= 0, hi) and reaches past
    hi to exactly hi (no value above hi reaches it). Returns the quantizers changed."""
    proto, found = trace_graph(model, input_size, 13)
    graph = proto.graph
    writers = producers(graph)
    capped = []
    for node in graph.node:
        if not is_marker(node):
            continue
        q = found[marker_tag(node)]
        clip = writers.get(node.input[0])
        bounds = clip_bounds(clip, graph) if clip is not None else None
        if bounds is None or q.signed or bounds[0] > 0 or q.scale.numel() != 1 or inside(q, bounds):
            continue
        q.set_scale(bounds[1] / q.qmax)
        capped.append(marker_tag(node))
    return capped
