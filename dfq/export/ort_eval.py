"""Accuracy (and latency) of an exported ONNX file in onnxruntime, on real images.

The preprocessing comes from the file itself (`dfq.data_config` metadata written at export), so an
.onnx is evaluated the way it will be deployed, without the PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from dfq.data import load_images
from dfq.errors import DfqError
from dfq.evaluate import evaluate
from dfq.export.export_config import weight_type_for_this_cpu
from dfq.export.runtime import (
    latency_report,
    onnx_predictor,
    open_session,
    session_data_config,
    session_options,
)
from dfq.export.weight_codes import to_unsigned_weights


def evaluate_onnx(
    path: str | Path,
    data: str | Path,
    providers: list[str] | None = None,
    batch_size: int = 256,
    limit: int | None = None,
    latency: bool = False,
    show_progress: bool = True,
    threads: int | None = None,
    as_stored: bool = False,
) -> dict:
    """Top-1 / top-5 of `path` on `data`; `latency` adds batch-1 p50 / p90 ms, batch-32 images/s.

    `threads` caps onnxruntime's intra-op threads (default: one per core), for shared machines.
    int8 weights that onnxruntime would run on saturating kernels here (a file exported on a VNNI
    CPU, scored on one without) are scored as an exact uint8 copy (`weights_shifted` in the
    result) unless `as_stored`, which measures what this CPU's kernels make of the file.
    """
    session, shifted = exact_session(path, providers, threads, as_stored)
    cfg = session_data_config(session, str(path))
    out_shape = session.get_outputs()[0].shape
    if len(out_shape) == 2 and isinstance(out_shape[1], int):
        cfg.num_classes = out_shape[1]
    images = load_images(data, cfg, limit=limit)
    have, want = images.image_shape, tuple(cfg.input_size)
    if have != want:
        raise DfqError(
            f"{data}: images are {'x'.join(map(str, have))} but {path} expects "
            f"{'x'.join(map(str, want))}; resize the data or export at that size"
        )
    images.check_fits(cfg, cfg.num_classes)
    result = evaluate(
        onnx_predictor(session), images, cfg, batch_size=batch_size, show_progress=show_progress
    )
    result["providers"] = session.get_providers()
    result["weights_shifted"] = shifted
    if latency:
        result.update(latency_report(session, tuple(cfg.input_size)))
    return result


def exact_session(
    path: str | Path, providers: list[str] | None, threads: int | None, as_stored: bool = False
) -> tuple[ort.InferenceSession, int]:
    """A session of `path`; on a CPU whose int8 kernels saturate, of its exact uint8-weight copy
    (`dfq.export.weight_codes`). Also returns how many weight tensors were shifted."""
    session = open_session(path, providers, session_options(threads))
    on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
    if as_stored or not on_cpu or weight_type_for_this_cpu() == "int8":  # int8 is exact here
        return session, 0
    proto = onnx.load(str(path))
    shifted = to_unsigned_weights(proto)
    if not shifted:
        return session, 0
    copy = ort.InferenceSession(
        proto.SerializeToString(), session_options(threads), providers=session.get_providers()
    )
    return copy, shifted
