import torch

from dfq.models.cifar_resnet import cifar_resnet


def test_resnet20_shapes_and_size():
    model = cifar_resnet(20).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_params < 0.28e6  # 0.27 M, as published
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_option_a_shortcut_has_no_parameters_and_pads_channels():
    model = cifar_resnet(20)
    block = model.layer2[0]
    assert not list(block.shortcut.parameters())
    x = torch.randn(1, 16, 32, 32)
    y = block.shortcut(x)
    assert y.shape == (1, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_depths():
    for depth, blocks in ((32, 5), (56, 9)):
        assert len(cifar_resnet(depth).layer1) == blocks
