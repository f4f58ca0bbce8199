"""onnxruntime sessions: open with a clear error, predict, count fused kernels, measure latency."""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from dfq.errors import DfqError
from dfq.evaluate import Predictor
from dfq.export.metadata import read_data_config
from dfq.models.data_config import DataConfig

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
INTEGER_CONVS = ("QLinearConv", "ConvInteger")


def session_options(
    threads: int | None = None,
    optimized_path: str | Path | None = None,
    profile: bool = False,
    optimize: bool = True,
) -> ort.SessionOptions:
    """`optimize=False`: onnxruntime's reference execution, every node as written (no fusion)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    if profile:
        opts.enable_profiling = True
    return opts


def open_session(
    path: str | Path,
    providers: tuple[str, ...] | list[str] | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An InferenceSession; a missing / non-ONNX file or an unknown provider raises DfqError."""
    path = Path(path)
    providers = list(providers or DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise DfqError(
            f"unknown execution provider {', '.join(unknown)}; "
            f"available here: {', '.join(available)}"
        )
    if not path.is_file():
        raise DfqError(f"ONNX file not found: {path}")
    try:
        return ort.InferenceSession(str(path), options or session_options(), providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DfqError(f"{path} is not a valid ONNX model ({first[:200]})") from None


def session_data_config(session: ort.InferenceSession, source: str) -> DataConfig:
    """Preprocessing from the file's metadata; the graph's own input shape wins over it."""
    cfg = read_data_config(session.get_modelmeta().custom_metadata_map, source)
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
        cfg.input_size = tuple(shape[1:])
    return cfg


def onnx_predictor(session: ort.InferenceSession) -> Predictor:
    """Normalized float batch -> logits, as `dfq.evaluate.evaluate` expects."""
    name = session.get_inputs()[0].name

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    return predict


def optimized_op_counts(path: str | Path, threads: int | None = 1) -> collections.Counter:
    """Operator counts of the graph onnxruntime actually runs (after its QDQ fusions)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        open_session(path, options=session_options(threads, optimized_path=out))
        graph = onnx.load(str(out), load_external_data=False).graph
    return collections.Counter(n.op_type for n in graph.node)


def integer_conv_count(counts: collections.Counter) -> int:
    return sum(counts[op] for op in INTEGER_CONVS)


def latency(
    session: ort.InferenceSession,
    input_size: tuple[int, ...],
    batch: int,
    seconds: float = 2.0,
    min_runs: int = 10,
    warmup: int = 3,
) -> list[float]:
    """Wall times (ms) of single runs on a random batch, for `seconds` and at least `min_runs`."""
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, *input_size)).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def latency_report(
    session: ort.InferenceSession, input_size: tuple[int, ...], seconds: float = 2.0
) -> dict:
    """Batch-1 p50 / p90 latency (ms) and batch-32 throughput (images/s)."""
    one = np.array(latency(session, input_size, 1, seconds))
    big = np.array(latency(session, input_size, 32, seconds, min_runs=3))
    return {
        "latency_ms_p50": round(float(np.percentile(one, 50)), 3),
        "latency_ms_p90": round(float(np.percentile(one, 90)), 3),
        "throughput_b32": round(float(32 * 1e3 / np.median(big)), 1),
    }
