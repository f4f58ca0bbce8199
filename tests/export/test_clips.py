"""ReLU6 clips next to unsigned quantizers: dropped from the graph, no extra output quantizers."""

import onnx
import pytest
import torch

from dfq.export import ExportConfig, export_onnx, export_quantized, prepare_for_export
from dfq.export.check import output_step
from dfq.export.clips import inside
from dfq.export.runtime import integer_conv_count, onnx_predictor, open_session, optimized_op_counts
from dfq.quant.layers import QuantConv2d
from tests.export.conftest import DATA, TinyMobileNet, tiny_quantized


def _output_quantizers(model) -> dict:
    return {
        name: m.output_quantizer
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d) and m.output_quantizer is not None
    }


@pytest.mark.parametrize("bits", [8, 4])
def test_relu6_convs_fuse_without_output_quantizers(bits, tmp_path):
    model, calib = tiny_quantized(bits, net=TinyMobileNet)
    summary = export_quantized(model, tmp_path, DATA, calib, ExportConfig())
    added = _output_quantizers(model)
    # only the projection feeding the Add (signed) and the head feeding the pooling (unsigned,
    # ending at 6 at most, so that it equals ReLU6 then Q); stem, expansion and depthwise convs
    # reach the next quantizer through their ReLU6, which the exporter drops
    assert set(added) == {"block.conv_pwl.0", "head.0"}
    assert added["block.conv_pwl.0"].signed
    head_q = added["head.0"]
    assert not head_q.signed and float(head_q.scale) * head_q.qmax <= 6.0 * (1 + 1e-6)
    counts = optimized_op_counts(tmp_path / "model.onnx")
    assert integer_conv_count(counts) == sum(isinstance(m, QuantConv2d) for m in model.modules())
    if bits == 8:  # at 4 bits the restoring Clips of the narrow grids stay (dfq.export.qdq)
        assert counts["Clip"] == 0
    assert summary["check"]["argmax_agreement"] == 1.0
    with torch.no_grad():
        ref = model(calib)
    got = onnx_predictor(open_session(tmp_path / "model.onnx"))(calib)
    assert float(((got - ref).abs().amax(dim=1) / output_step(ref)).max()) <= 1.0


def test_a_range_reaching_past_six_is_capped_at_six(tmp_path):
    model, calib = tiny_quantized(8, net=TinyMobileNet)
    q = model.block.conv_pwl[0].input_quantizer  # reads the depthwise conv's ReLU6
    q.set_scale(9.0 / q.qmax)
    assert not inside(q, (0.0, 6.0))
    prepare_for_export(model, calib)
    assert float(q.scale.detach()) * q.qmax == pytest.approx(6.0, rel=1e-6)
    assert model.block.conv_dw[0].output_quantizer is None
    summary = export_quantized(model, tmp_path, DATA, calib, ExportConfig())
    assert summary["check"]["argmax_agreement"] == 1.0


def test_a_clip_the_quantizer_does_not_cover_stays(tmp_path):
    """Without `prepare_for_export`'s cap, a range past 6 keeps its ReLU6 in the graph."""
    model, calib = tiny_quantized(8, net=TinyMobileNet)
    q = model.block.conv_pwl[0].input_quantizer
    q.set_scale(9.0 / q.qmax)
    path = tmp_path / "model.onnx"
    export_onnx(model, path, ExportConfig(), DATA, calib)
    clips = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Clip"]
    # the depthwise conv's stays, and the head's (nothing quantizes it without prepare); the
    # stem's and the expansion's are dropped
    assert sorted(clips) == ["/block/conv_dw/conv_dw.2/Clip", "/head/head.2/Clip"]
    got = onnx_predictor(open_session(path))(calib)
    with torch.no_grad():
        assert torch.equal(got.argmax(1), model(calib).argmax(1))
