"""int8 weight codes rewritten as uint8 codes + 128, for CPUs whose int8 kernels saturate.

`dfq quantize` picks the weight container for the CPU it exports on (`ExportConfig.weight_type`):
int8 where onnxruntime's U8S8 kernels are exact (VNNI), uint8 + 128 elsewhere. A file exported on a
VNNI machine (a GPU server) and run on an AVX2-only CPU saturates there (int16 pair sums,
`dfq.export.qdq`): the same model, other numbers. Shifting codes and zero point by 128 leaves
every dequantized weight as it was and selects the exact U8U8 kernels.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from dfq.export.export_config import weight_type_for_this_cpu

SHIFT = 128


def signed_weight_codes(proto: onnx.ModelProto) -> list[str]:
    """Initializers read by a DequantizeLinear as int8 codes with an int8 zero-point initializer."""
    inits = {t.name: t for t in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        codes, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if codes is None or zp is None:
            continue
        if codes.data_type == zp.data_type == TensorProto.INT8 and codes.name not in found:
            found.append(codes.name)
    return found


def to_unsigned_weights(proto: onnx.ModelProto) -> int:
    """Rewrite int8 weight codes (and their zero points) as uint8 + 128, in place: the same
    dequantized values. Returns how many weight tensors changed."""
    inits = {t.name: t for t in proto.graph.initializer}
    codes = set(signed_weight_codes(proto))
    if not codes:
        return 0
    zero_points = {
        n.input[2]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and len(n.input) >= 3 and n.input[0] in codes
    }
    for name in sorted(codes | zero_points):
        t = inits[name]
        shifted = (numpy_helper.to_array(t).astype(np.int16) + SHIFT).astype(np.uint8)
        t.CopyFrom(numpy_helper.from_array(shifted, name))
    return len(codes)


def saturates_here(proto: onnx.ModelProto) -> bool:
    """Whether onnxruntime on this CPU would run `proto`'s int8 weights on saturating kernels."""
    return weight_type_for_this_cpu() == "uint8" and bool(signed_weight_codes(proto))
