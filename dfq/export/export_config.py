"""What an ONNX export writes: opset, 4-bit container, and how strictly the result is checked."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from dfq.errors import DfqError

MIN_OPSET = 13
INT4_OPSET = 21
# The TorchScript exporter writes at most this opset; higher ones are reached by re-stamping the
# float graph, whose operators did not change meaning between 20 and 21.
MAX_TRACE_OPSET = 20
WEIGHT_TYPES = ("auto", "int8", "uint8")


@dataclass
class ExportConfig:
    """Options of `export_onnx`.

    Attributes:
        opset: ONNX opset of the written file; 13 is the first with per-axis DequantizeLinear.
        int4: store 4-bit tensors in native INT4/UINT4 types (needs opset 21). Off by default:
            onnxruntime's CPU provider has no int4 convolution, the int8-container graph is fast.
        weight_type: container of the weight codes. "int8" runs onnxruntime's U8S8 kernels,
            which saturate on x86 CPUs without VNNI (int16 pair sums); "uint8" (codes + 128) its
            U8U8 kernels, exact everywhere and slower where VNNI exists. "auto": uint8 unless
            this CPU has VNNI or is not x86 (`weight_type_for_this_cpu`).
        check: run onnx.checker and compare onnxruntime with PyTorch after writing.
        check_images: how many calibration images the comparison uses.
        tolerance: allowed deviation of an image's logits, in output quantization steps, beyond
            how far each implementation's own rounding takes it from exact arithmetic (see
            `dfq.export.check.check_against_torch`).
        min_agreement: share of the checked images whose onnxruntime and PyTorch argmax must agree.
        min_within: share of the checked images that must deviate by at most `tolerance` steps.
            Both shares are near 1: the check decides by the worst images, not the median one.
    """

    opset: int = MIN_OPSET
    int4: bool = False
    weight_type: str = "auto"
    check: bool = True
    check_images: int = 256
    tolerance: float = 1.0
    min_agreement: float = 0.995
    min_within: float = 0.995

    def __post_init__(self) -> None:
        self.opset = int(self.opset)
        if not MIN_OPSET <= self.opset <= INT4_OPSET:
            raise DfqError(f"opset must be in {MIN_OPSET}..{INT4_OPSET}, got {self.opset}")
        if self.int4 and self.opset < INT4_OPSET:
            raise DfqError(
                f"native INT4 needs opset {INT4_OPSET} (got --opset {self.opset}); "
                f"pass --opset {INT4_OPSET} or drop --int4"
            )
        if self.weight_type not in WEIGHT_TYPES:
            raise DfqError(
                f"weight_type must be one of {', '.join(WEIGHT_TYPES)}, got {self.weight_type!r}"
            )
        if self.check_images < 1:
            raise DfqError(f"check_images must be at least 1, got {self.check_images}")
        if self.tolerance <= 0:
            raise DfqError(f"tolerance must be positive, got {self.tolerance}")
        for name in ("min_agreement", "min_within"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise DfqError(f"{name} must be in [0, 1], got {value}")


# What evaluate's note and report.md tell a user whose int8 file saturates on their CPU.
REEXPORT_UINT8 = "dfq export DIR --out model-u8.onnx --weight-type uint8"


def weight_type_for_this_cpu() -> str:
    """ "int8" where onnxruntime's U8S8 kernels are exact (x86 with VNNI, other architectures),
    "uint8" on x86 without VNNI or when its CPU flags cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "int8"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "uint8"
    return "int8" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "uint8"
