"""What an ONNX export writes: opset, 4-bit container, and how strictly the result is checked."""

from __future__ import annotations

from dataclasses import dataclass

from dfq.errors import DfqError

MIN_OPSET = 13
INT4_OPSET = 21
# The TorchScript exporter writes at most this opset; higher ones are reached by re-stamping the
# float graph, whose operators did not change meaning between 20 and 21.
MAX_TRACE_OPSET = 20


@dataclass
class ExportConfig:
    """Options of `export_onnx`.

    Attributes:
        opset: ONNX opset of the written file; 13 is the first with per-axis DequantizeLinear.
        int4: store 4-bit tensors in native INT4/UINT4 types (needs opset 21). Off by default:
            onnxruntime's CPU provider has no int4 convolution, the int8-container graph is fast.
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
        if self.check_images < 1:
            raise DfqError(f"check_images must be at least 1, got {self.check_images}")
        if self.tolerance <= 0:
            raise DfqError(f"tolerance must be positive, got {self.tolerance}")
        for name in ("min_agreement", "min_within"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise DfqError(f"{name} must be in [0, 1], got {value}")
