"""int8 weight codes shifted to uint8 + 128 keep every value, and evaluate scores the exact copy."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from dfq.export import ExportConfig, export_quantized
from dfq.export.ort_eval import evaluate_onnx
from dfq.export.runtime import onnx_predictor, open_session, session_options
from dfq.export.weight_codes import signed_weight_codes, to_unsigned_weights
from tests.export.conftest import DATA


@pytest.fixture(scope="module")
def int8_file(w8a8, tmp_path_factory):
    """The W8A8 fixture exported with int8 weight codes, as on a CPU with VNNI."""
    model, calib = w8a8
    out = tmp_path_factory.mktemp("int8")
    cfg = ExportConfig(weight_type="int8", check=False)
    export_quantized(copy.deepcopy(model), out, DATA, calib, cfg)
    return out / "model.onnx", calib


def _reference(path, x):
    """onnxruntime's reference execution: every DequantizeLinear in float, no integer kernel."""
    return onnx_predictor(open_session(path, options=session_options(1, optimize=False)))(x)


def test_shifted_codes_dequantize_to_the_same_model(int8_file, tmp_path):
    path, calib = int8_file
    proto = onnx.load(str(path))
    signed = signed_weight_codes(proto)
    assert len(signed) == 5  # stem, conv1, conv2, down, head
    assert to_unsigned_weights(proto) == len(signed)
    assert signed_weight_codes(proto) == {}
    inits = {t.name: t for t in proto.graph.initializer}
    assert all(inits[n].data_type == TensorProto.UINT8 for n in signed)
    out = tmp_path / "u8.onnx"
    onnx.save(proto, str(out))
    a, b = _reference(path, calib), _reference(out, calib)
    assert torch.equal(a, b)
    # and the fused uint8 kernels compute it too (exact on any CPU)
    fused = onnx_predictor(open_session(out))(calib)
    assert torch.equal(fused.argmax(1), a.argmax(1))


def test_evaluate_scores_the_exact_copy_only_where_int8_saturates(int8_file, tmp_path, monkeypatch):
    path, _ = int8_file
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8), y=np.arange(20) % 5)
    monkeypatch.setattr("dfq.export.ort_eval.weight_type_for_this_cpu", lambda: "uint8")
    here = evaluate_onnx(path, data, show_progress=False)
    assert here["weights_shifted"] == 5
    assert evaluate_onnx(path, data, show_progress=False, as_stored=True)["weights_shifted"] == 0
    monkeypatch.setattr("dfq.export.ort_eval.weight_type_for_this_cpu", lambda: "int8")
    assert evaluate_onnx(path, data, show_progress=False)["weights_shifted"] == 0
