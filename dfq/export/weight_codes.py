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

SHIFT = 128


def signed_weight_codes(proto: onnx.ModelProto) -> dict[str, str]:
    """int8 code initializers read by a DequantizeLinear with an int8 zero-point initializer,
    each mapped to that zero point."""
    inits = {t.name: t for t in proto.graph.initializer}
    found: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        codes, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if codes is None or zp is None:
            continue
        if codes.data_type == zp.data_type == TensorProto.INT8:
            found.setdefault(codes.name, zp.name)
    return found


def to_unsigned_weights(proto: onnx.ModelProto) -> int:
    """Rewrite int8 weight codes (and their zero points) as uint8 + 128, in place: the same
    dequantized values. Returns how many weight tensors changed."""
    signed = signed_weight_codes(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    for name in sorted(set(signed) | set(signed.values())):
        t = inits[name]
        shifted = (numpy_helper.to_array(t).astype(np.int16) + SHIFT).astype(np.uint8)
        t.CopyFrom(numpy_helper.from_array(shifted, name))
    return len(signed)
