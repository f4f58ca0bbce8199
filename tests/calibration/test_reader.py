import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from dfq.calibration import CalibrationReader, CalibrationSet, save_calibration
from dfq.models.data_config import DataConfig

DATA = DataConfig(input_size=(3, 8, 8), num_classes=2)


def _tiny_onnx(path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=108).astype(np.float32)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], values)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["out"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_reader_feeds_quantize_static(tmp_path):
    calib = CalibrationSet(
        torch.randn(10, 3, 8, 8),
        torch.arange(10) % 2,
        {"data_config": DATA.to_dict(), "input_name": "images"},
    )
    save_calibration(calib, tmp_path / "c.npz")
    reader = CalibrationReader(tmp_path / "c.npz", "images", batch_size=4)
    batches = [reader.get_next() for _ in range(4)]
    assert [b["images"].shape[0] for b in batches[:3]] == [4, 4, 2] and batches[3] is None
    reader.rewind()
    _tiny_onnx(tmp_path / "m.onnx")
    quantize_static(
        str(tmp_path / "m.onnx"),
        str(tmp_path / "q.onnx"),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    ops = {n.op_type for n in onnx.load(tmp_path / "q.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
