"""The float graph of a (fake-quantized) model, with a marker node wherever a quantizer acts.

PyTorch's exporter refuses 4-bit ranges in its fake-quantize ops, so quantizers are traced as an
opaque `dfq::Quant` node tagged with the quantizer's module name; `dfq.export.qdq` later lowers each
marker to QuantizeLinear / DequantizeLinear. Markers sit exactly where PyTorch applies the
quantizer, so the ONNX graph computes what the fake-quant model computes, whatever the architecture.
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from dfq.errors import DfqError
from dfq.export.export_config import MAX_TRACE_OPSET
from dfq.quant.quantizer import Quantizer

MARKER_DOMAIN = "dfq"
MARKER_OP = "Quant"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def is_marker(node: onnx.NodeProto) -> bool:
    """Whether `node` is a quantizer marker of a traced graph."""
    return node.domain == MARKER_DOMAIN and node.op_type == MARKER_OP


def marker_tag(node: onnx.NodeProto) -> str:
    """The module name of the quantizer a marker stands for."""
    return next(a.s.decode() for a in node.attribute if a.name == "tag")


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node writing it."""
    return {o: n for n in graph.node for o in n.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes reading it."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


class _Marker(torch.autograd.Function):
    """Exports as one `dfq::Quant` node that carries the quantizer's module name."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tag: str) -> torch.Tensor:
        # Tracing only needs the shape: touching the quantizer's parameters here would leak them
        # into the trace, outside the exporter's value map.
        return x.clone()

    @staticmethod
    def symbolic(g, x, tag):  # noqa: ANN001 (TorchScript graph objects)
        out = g.op(f"{MARKER_DOMAIN}::{MARKER_OP}", x, tag_s=tag)
        out.setType(x.type())
        return out


def quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """Enabled quantizers by module name (disabled ones are identities and export as nothing)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Quantizer) and m.enabled}


def _mark(tag: str, x: torch.Tensor) -> torch.Tensor:
    return _Marker.apply(x, tag)


@contextlib.contextmanager
def _marked(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Route every enabled quantizer through `_Marker` while tracing; restores the modules."""
    found = quantizers(model)
    for tag, q in found.items():
        q.forward = functools.partial(_mark, tag)
    try:
        yield found
    finally:
        for q in found.values():
            del q.forward


def trace_graph(
    model: nn.Module, input_size: tuple[int, ...], opset: int
) -> tuple[onnx.ModelProto, dict[str, nn.Module]]:
    """Export `model` (eval mode, CPU) to an in-memory ONNX model with a dynamic batch axis.

    Returns the graph, still holding `dfq::Quant` markers, and the quantizers they name.
    """
    was_training = model.training
    model.eval()
    example = torch.randn(1, *input_size)
    buf = io.BytesIO()
    try:
        with _marked(model) as found, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,
                opset_version=min(opset, MAX_TRACE_OPSET),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                custom_opsets={MARKER_DOMAIN: 1} if found else None,
                do_constant_folding=True,
            )
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DfqError(f"PyTorch could not export the model to ONNX: {first}") from None
    finally:
        model.train(was_training)
    return onnx.load_from_string(buf.getvalue()), found
