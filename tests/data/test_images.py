import numpy as np
import pytest
import torch
from PIL import Image

from dfq.data import ImageSet, load_images
from dfq.data.images import IMAGE_SUFFIXES, _resize_crop
from dfq.errors import DfqError
from dfq.models.data_config import DataConfig

CFG = DataConfig((3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0, 10)


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_uint8_nchw_and_nhwc_agree(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    y = np.arange(5)
    a = load_images(_npz(tmp_path, "a.npz", x=x, y=y), CFG)
    b = load_images(_npz(tmp_path, "b.npz", x=x.transpose(0, 2, 3, 1), y=y), CFG)
    assert torch.equal(a.x, b.x)
    xa, _ = next(a.batches(CFG, 5))
    # (x / 255 - 0.5) / 0.25, by hand for one pixel
    assert xa[0, 0, 0, 0].item() == pytest.approx((x[0, 0, 0, 0] / 255 - 0.5) / 0.25, abs=1e-6)


def test_float_images_in_unit_range(tmp_path):
    x = np.full((2, 3, 8, 8), 0.75, dtype=np.float32)
    data = load_images(_npz(tmp_path, x=x, y=np.array([1, 2])), CFG)
    xb, yb = next(data.batches(CFG, 2))
    assert torch.allclose(xb, torch.ones_like(xb))  # (0.75 - 0.5) / 0.25
    assert yb.tolist() == [1, 2]


def test_float_images_out_of_range(tmp_path):
    x = np.full((2, 3, 8, 8), 200.0, dtype=np.float32)
    with pytest.raises(DfqError, match=r"pixel values in \[0, 1\]"):
        load_images(_npz(tmp_path, x=x, y=np.array([1, 2])), CFG)


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 4, 8, 7)])
def test_wrong_shapes(tmp_path, shape):
    x = np.zeros(shape, dtype=np.uint8)
    with pytest.raises(DfqError, match="images must be|channel axis"):
        load_images(_npz(tmp_path, x=x, y=np.arange(5)), CFG)


def test_label_count_mismatch(tmp_path):
    x = np.zeros((5, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(DfqError, match="one integer per image"):
        load_images(_npz(tmp_path, x=x, y=np.arange(4)), CFG)


def test_label_range_and_size_checks(tmp_path):
    x = np.zeros((3, 3, 8, 8), dtype=np.uint8)
    data = load_images(_npz(tmp_path, x=x, y=np.array([0, 5, 12])), CFG)
    with pytest.raises(DfqError, match=r"labels range over 0..12 but the model has 10 classes"):
        data.check_fits(CFG, 10)
    big = DataConfig((3, 16, 16), CFG.mean, CFG.std, "bilinear", 1.0, 10)
    with pytest.raises(DfqError, match="images are 3x8x8 but the model expects 3x16x16"):
        data.check_fits(big)


def test_not_an_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_text("hello")
    with pytest.raises(DfqError, match="not a readable .npz"):
        load_images(path, CFG)
    with pytest.raises(DfqError, match="data not found"):
        load_images(tmp_path / "missing.npz", CFG)


def test_image_folder_resizes_and_labels_by_folder(tmp_path):
    for _label, (name, colour) in enumerate((("cat", (255, 0, 0)), ("dog", (0, 0, 255)))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 12), colour).save(tmp_path / name / "a.png")
    data = load_images(tmp_path, CFG)
    assert data.x.shape == (2, 3, 8, 8) and data.x.dtype == torch.uint8
    assert data.y.tolist() == [0, 1]
    assert data.x[0, 0].min() == 255 and data.x[1, 2].min() == 255 and data.x[0, 2].max() == 0


def test_take_limits():
    data = ImageSet(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.arange(10))
    assert len(data.take(3)) == 3 and data.take(3).y.tolist() == [0, 1, 2]


def _mixed_folder(root):
    """Seven images over three classes: JPEG and PNG, RGB / grey / palette / RGBA, odd sizes."""
    rng = np.random.default_rng(1)
    specs = {
        "ant": [("a.jpg", "RGB", (37, 23)), ("b.png", "L", (20, 31))],
        "bee": [("c.png", "P", (16, 16)), ("d.jpeg", "RGB", (90, 30)), ("e.png", "RGBA", (25, 40))],
        "cow": [("f.JPG", "RGB", (64, 48)), ("g.png", "RGB", (9, 13))],
    }
    for cls, images in specs.items():
        (root / cls).mkdir()
        for name, mode, (w, h) in images:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / cls / name)
    (root / "cow" / "notes.txt").write_text("not an image")


def _serial(root, cfg):
    """Today's loader, one image after another: the reference the threaded loader must match."""
    xs, ys = [], []
    for label, cls in enumerate(sorted(d.name for d in root.iterdir())):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as im:
                    xs.append(_resize_crop(im.convert("RGB"), cfg))
                ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


@pytest.mark.parametrize("workers", [1, 4])
def test_folder_threads_give_the_serial_pixels(tmp_path, workers):
    cfg = DataConfig((3, 12, 12), CFG.mean, CFG.std, "bicubic", 0.875, 3)
    _mixed_folder(tmp_path)
    want_x, want_y = _serial(tmp_path, cfg)
    threads = torch.get_num_threads()

    streamed = load_images(tmp_path, cfg)
    streamed.workers = workers
    assert len(streamed) == 7 and streamed.image_shape == (3, 12, 12)
    got = list(streamed.batches(cfg, 3))  # 3 + 3 + 1: a short last batch
    assert [len(y) for _, y in got] == [3, 3, 1]
    assert torch.equal(torch.cat([x for x, _ in got]), streamed.normalize(want_x, cfg))
    assert torch.equal(torch.cat([y for _, y in got]), want_y)

    whole = load_images(tmp_path, cfg)
    whole.workers = workers
    assert whole.x.dtype == torch.uint8 and torch.equal(whole.x, want_x)
    assert torch.equal(whole.y, want_y) and want_y.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert torch.get_num_threads() == threads


def test_folder_decodes_only_what_is_used(tmp_path):
    _mixed_folder(tmp_path)
    first_two = _serial(tmp_path, CFG)[0][:2]
    (tmp_path / "bee" / "c.png").write_bytes(b"\x89PNG truncated")  # the third image
    data = load_images(tmp_path, CFG)  # lazy: the bad file is not read yet
    data.check_fits(CFG, 3)
    assert torch.equal(data.take(2).x, first_two)
    batches = data.batches(CFG, 2)
    assert len(next(batches)[1]) == 2
    with pytest.raises(DfqError, match=r"bee[/\\]c\.png: cannot read image"):
        next(batches)
    with pytest.raises(DfqError, match=r"bee[/\\]c\.png: cannot read image"):
        _ = data.x
    first = data.batches(CFG, 2)
    next(first)
    first.close()  # stopping early shuts the decoding threads down
