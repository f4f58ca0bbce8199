import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from dfq.errors import DfqFailure
from dfq.export import ExportConfig, export_onnx, export_quantized, prepare_for_export
from dfq.export.check import output_step
from dfq.export.runtime import integer_conv_count, onnx_predictor, open_session, optimized_op_counts
from dfq.quant.attached import attached_quantizers
from dfq.quant.layers import QuantConv2d, quant_layers
from tests.export.conftest import DATA


def _export(model_calib, tmp_path, **cfg):
    model, calib = model_calib
    summary = export_quantized(model, tmp_path, DATA, calib, ExportConfig(**cfg))
    return model, calib, tmp_path / "model.onnx", summary


@pytest.mark.parametrize("which", ["w8a8", "w4a4"])
def test_onnxruntime_matches_pytorch_within_one_output_step(which, request, tmp_path):
    model, calib, path, summary = _export(request.getfixturevalue(which), tmp_path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    with torch.no_grad():
        ref = model(calib)
    got = onnx_predictor(open_session(path))(calib)
    dev = (got - ref).abs().amax(dim=1) / output_step(ref)
    assert float(dev.max()) <= 1.0
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert summary["check"]["argmax_agreement"] == 1.0


@pytest.mark.parametrize("which", ["w8a8", "w4a4"])
def test_every_quantized_conv_runs_as_qlinearconv(which, request, tmp_path):
    model, _, path, _ = _export(request.getfixturevalue(which), tmp_path)
    n_convs = sum(isinstance(m, QuantConv2d) for m in model.modules())
    assert n_convs == 4
    assert integer_conv_count(optimized_op_counts(path)) == n_convs
    # conv2 feeds the residual Add: signed 8-bit output quantizer; the stem's ReLU feeds conv1 and
    # the Add: unsigned one; conv1 -> ReLU -> conv2's input quantizer fuses as it is.
    assert model.conv2.output_quantizer.signed and model.conv2.output_quantizer.bits == 8
    assert not model.stem[0].output_quantizer.signed
    assert model.conv1.output_quantizer is None


def _dq_inputs_of(graph, op_type):
    producers = {o: n for n in graph.node for o in n.output}
    return [producers[n.input[0]] for n in graph.node if n.op_type == op_type]


def test_4bit_export_holds_16_levels(w4a4, tmp_path):
    model, calib, path, _ = _export(w4a4, tmp_path)
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, layer in quant_layers(model).items():
        codes = inits[f"{name}.weight_quantizer.codes"]
        zero = inits[f"{name}.weight_quantizer.zero_point"]
        # int8 at zero point 0, or uint8 shifted by 128 (ExportConfig.weight_type on this CPU)
        assert (codes.dtype, int(zero.min()), int(zero.max())) in (
            (np.int8, 0, 0),
            (np.uint8, 128, 128),
        )
        lo, hi = (-8, 7) if layer.weight_quantizer.bits == 4 else (-128, 127)
        signed = codes.astype(np.int32) - int(zero.min())
        assert signed.min() >= lo and signed.max() <= hi
    # expose every conv's input (a DequantizeLinear output) and count its distinct values
    dqs = _dq_inputs_of(proto.graph, "Conv")
    for dq in dqs:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(dq.output[0], onnx.TensorProto.FLOAT, None)
        )
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run([dq.output[0] for dq in dqs], {"input": calib.numpy()})
    levels = {dq.name: len(np.unique(v)) for dq, v in zip(dqs, outs, strict=True)}
    four_bit = [
        f"{n}.input_quantizer/DQ"
        for n, m in quant_layers(model).items()
        if isinstance(m, QuantConv2d) and m.input_quantizer.bits == 4
    ]
    assert four_bit and all(1 < levels[k] <= 16 for k in four_bit), levels
    assert levels["stem.0.input_quantizer/DQ"] > 16  # the 8-bit first layer keeps its 256 levels


def test_float_export_is_exact_and_has_metadata(tmp_path):
    from tests.export.conftest import TinyResNet

    model = TinyResNet().eval()
    path = tmp_path / "fp.onnx"
    summary = export_onnx(model, path, ExportConfig(), DATA)
    assert summary["quantization"] == "fp32" and summary["check"]["max_dev_steps"] < 0.01
    sess = open_session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    assert '"mean": [0.5, 0.5, 0.5]' in meta["dfq.data_config"]
    assert sess.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    x = torch.randn(3, *DATA.input_size)
    assert onnx_predictor(sess)(x).shape == (3, 5)


def test_native_int4_option_writes_int4_tensors(w4a4, tmp_path):
    _, _, path, _ = _export(w4a4, tmp_path, opset=21, int4=True)
    proto = onnx.load(str(path))
    types = {t.data_type for t in proto.graph.initializer}
    assert onnx.TensorProto.INT4 in types
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}


def test_a_disagreeing_graph_fails_the_check(w8a8, tmp_path):
    from dfq.export.check import check_against_torch

    model, calib = w8a8
    prepare_for_export(model, calib)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, ExportConfig(check=False), DATA, calib)
    shift = 5.0 * torch.arange(5.0)
    with torch.no_grad():
        model.head.bias.add_(shift)  # PyTorch no longer computes what was exported
    try:
        with pytest.raises(DfqFailure, match="onnxruntime disagrees with PyTorch") as err:
            check_against_torch(model, path, calib, ExportConfig())
        # the head's output has no quantizer: every quantizer output still agrees
        assert "the divergence comes after the last quantizer" in str(err.value)
    finally:
        with torch.no_grad():
            model.head.bias.sub_(shift)


@pytest.mark.parametrize("bits", [8, 4])
def test_residual_stream_is_quantized_once_and_every_add_fuses(bits, tmp_path):
    from tests.export.conftest import TinyBlockNet, tiny_quantized

    model, calib = tiny_quantized(bits, net=TinyBlockNet)
    blocks = attached_quantizers(model, "input")
    assert set(blocks) == {"block1", "block2"}
    for name, q in blocks.items():
        assert q.bits == bits and not q.signed  # the activation bits, on a post-ReLU tensor
        assert model.get_submodule(f"{name}.conv1.0").input_quantizer is None  # reads q's output
    # the shortcut reads the quantized tensor too: y = relu(q(x) + body(q(x)))
    block = model.block1
    x = torch.relu(torch.randn(4, 8, 16, 16))
    with torch.no_grad():
        xq = blocks["block1"](x)
        assert torch.equal(block(x), torch.relu(xq + block.conv2(block.conv1(xq))))
    summary = export_quantized(model, tmp_path, DATA, calib, ExportConfig())
    # block2 feeds the mean pooling, not a quantizer: it gets an 8-bit output quantizer
    assert "block2" in summary["quantizers_added"]
    assert set(attached_quantizers(model, "output")) == {"block2"}
    counts = optimized_op_counts(tmp_path / "model.onnx")
    assert counts["QLinearAdd"] == 2 and counts["Add"] == 0 and counts["Relu"] == 0
    assert integer_conv_count(counts) == 5
    assert summary["check"]["argmax_agreement"] == 1.0


def test_attached_quantizers_survive_save_and_reload(tmp_path):
    from dfq.models import load_model
    from dfq.quant.insert import prepare
    from dfq.quant.quant_config import QuantConfig
    from dfq.quant.saved import load_quantized, save_quantized

    model, dcfg = load_model("cifar10_resnet20", pretrained=False)
    cfg = QuantConfig(wbits=4, abits=4)
    calib = torch.randn(16, 3, 32, 32)
    prepare(model, cfg, [calib])
    prepare_for_export(model, calib)
    blocks = attached_quantizers(model, "input")
    assert {"layer1.0", "layer2.0", "layer3.2"} <= set(blocks)  # the option-A shortcut too
    assert set(attached_quantizers(model, "output")) == {"layer3.2"}  # before the pooling
    save_quantized(model, tmp_path / "quantized.pt", "cifar10_resnet20", dcfg, cfg)
    back, _ = load_quantized(tmp_path)
    assert set(attached_quantizers(back, "input")) == set(blocks)
    assert prepare_for_export(back, calib) == []  # idempotent
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


def test_a_dead_channel_keeps_its_bias(tmp_path):
    """A channel with ~zero weights (BatchNorm gamma ~0) gets a weight step near MIN_SCALE; its
    bias, the channel's whole output, must still fit its int32 codes in PyTorch and ONNX alike."""
    from dfq.quant.quantizer import MIN_SCALE
    from tests.export.conftest import tiny_quantized

    model, calib = tiny_quantized(8)
    s_in = float(model.down.input_quantizer.scale.detach())
    big = 10 * (2**31) * s_in * MIN_SCALE  # 10x what int32 codes hold at the smallest step
    with torch.no_grad():
        model.down.weight[0].zero_()
        model.down.weight_quantizer.scale[0] = MIN_SCALE
        model.down.bias[0] = big
    summary = export_quantized(model, tmp_path, DATA, calib)
    step = float(model.down.weight_quantizer.scale[0].detach()) * s_in + 1e-6 * big  # float32
    assert abs(float(model.down.bias[0].detach()) - big) <= step
    proto = onnx.load(str(tmp_path / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    codes = inits["down.bias.codes"].astype(np.float64)
    scale = inits["down.bias.scale"].astype(np.float64)
    assert abs(codes[0] * scale[0] - big) <= step
    assert summary["check"]["argmax_agreement"] == 1.0
