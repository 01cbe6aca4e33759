"""VGG-16: taps and shapes by hand, and the layer layout checked against torchvision's VGG-16 ("D")."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from sslbench.backbones.vgg import VGG16, VGGConfig
from sslbench.errors import UserError


def test_taps_have_the_shapes_of_vgg16() -> None:
    net = VGG16(VGGConfig(image_size=64, width=0.125, fc_dim=32)).eval()
    out = net(torch.randn(2, 3, 64, 64), taps=tuple(net.feature_info))
    expected = {
        "conv1": (8, 64), "conv2": (16, 32), "conv3": (32, 16), "conv4": (64, 8), "conv5": (64, 4), "pool5": (64, 2),
    }
    for tap, (channels, size) in expected.items():
        assert out[tap].shape == (2, channels, size, size), tap
        info = net.feature_info[tap]
        assert (info.channels, info.size, info.stride) == (channels, size, 64 // size), tap
    assert out["fc6"].shape == (2, 32) and out["fc7"].shape == (2, 32)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 13


def test_stops_at_the_last_tap() -> None:
    net = VGG16(VGGConfig(image_size=32, width=0.125, fc_dim=16))
    assert list(net(torch.randn(1, 3, 32, 32), taps=("conv2",))) == ["conv2"]


@pytest.mark.parametrize("bn", [True, False])
def test_layout_matches_torchvision_vgg16(bn: bool) -> None:
    ours = VGG16(VGGConfig(image_size=32, bn=bn, width=0.25, fc_dim=16)).eval()
    quarter = [c if c == "M" else c // 4 for c in cfgs["D"]]  # torchvision's "D" list at a quarter width
    reference = make_layers(quarter, batch_norm=bn).eval()
    convs = [m for m in ours.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    theirs = [m for m in reference.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    assert len(convs) == len(theirs)
    for a, b in zip(convs, theirs):
        b.load_state_dict(a.state_dict(), strict=False)  # torchvision keeps a conv bias under BN: zero it
        if isinstance(b, torch.nn.Conv2d) and a.bias is None:
            torch.nn.init.zeros_(b.bias)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = ours(x, taps=("conv5", "pool5"))
        assert torch.allclose(out["conv5"], reference[:-1](x), atol=1e-5)
        assert torch.allclose(out["pool5"], reference(x), atol=1e-5)


def test_label_and_too_small_input() -> None:
    assert VGG16.label(VGGConfig(width=0.25)) == "vgg16-bn-w0.25"
    assert VGG16.label(VGGConfig(bn=False)) == "vgg16"
    with pytest.raises(UserError, match="image_size 16"):
        VGG16(VGGConfig(image_size=16))
