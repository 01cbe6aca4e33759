"""--init rescale: unit-variance pre-activations, function-preserving between-layer scaling, equalised rates."""

from __future__ import annotations

import torch

from sslbench.backbones.alexnet import AlexNet, AlexNetConfig
from sslbench.rescale import change_rates, rescale, scale_layers, scaled_layers, within_layer

TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")


def _net(bn: bool) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(AlexNetConfig(image_size=64, width=0.125, conv1_stride=2, fc_dim=32, bn=bn, dropout=0.0)).eval()


def test_within_layer_gives_zero_mean_unit_variance_per_channel() -> None:
    net, x = _net(bn=False), torch.randn(16, 3, 64, 64)
    within_layer(net, x, TAPS)
    for layer, _ in scaled_layers(net, TAPS):
        seen: list[torch.Tensor] = []
        h = layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.clone()))
        with torch.no_grad():
            net(x, taps=TAPS)
        h.remove()
        dims = [0] + list(range(2, seen[0].dim()))
        torch.testing.assert_close(seen[0].mean(dims), torch.zeros(seen[0].shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(seen[0].std(dims), torch.ones(seen[0].shape[1]), atol=1e-3, rtol=0)


def test_layer_scaling_preserves_the_function_with_and_without_batchnorm() -> None:
    for bn in (False, True):
        net, x = _net(bn), torch.randn(4, 3, 64, 64)
        with torch.no_grad():
            before = net(x, taps=("fc7",))["fc7"]
        r = torch.linspace(0.5, 2.0, len(scaled_layers(net, TAPS)))
        scale_layers(net, TAPS, r)
        with torch.no_grad():
            after = net(x, taps=("fc7",))["fc7"]
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_between_layer_equalises_unbalanced_change_rates() -> None:
    net, x = _net(bn=False), torch.randn(8, 3, 64, 64)
    within_layer(net, x, TAPS)
    n = len(scaled_layers(net, TAPS))
    scale_layers(net, TAPS, torch.tensor([3.0, 0.3, 2.0, 0.5, 1.5, 0.4, 1.0])[:n])  # same function, skewed rates
    spread_before = change_rates(net, x, TAPS)[:-1].log().std()
    rescale(net, x, TAPS, iterations=10)
    assert change_rates(net, x, TAPS)[:-1].log().std() < 0.5 * spread_before


def test_evaluate_with_rescale_labels_the_random_rescaled_row(tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_protocol

    out = evaluate(tiny_protocol("linear", ["protocol.taps=['conv1','conv2']"]), "random", tmp_path, "cpu",
                   progress=False, init="rescale")
    assert out.provenance.method == "random" and out.provenance.init == "random+rescale"
    from sslbench.report import RowKey

    assert RowKey("random", "", True, "alexnet", "mini", True).name == "Random rescaled"


def test_rescaled_feeds_the_trunk_at_its_own_side_whatever_the_protocol_loads() -> None:
    """voc-det loads VOC images larger than the trunk's input (its fc6 reads a fixed pool5 grid): the
    rescaling statistics are taken on images resized to the trunk's side, so fc6 is rescaled too."""
    from sslbench.checkpoint import TrunkSpec, load_trunk
    from sslbench.protocols.base import rescaled
    from tests.conftest import tiny_alexnet, tiny_protocol

    recipe = tiny_protocol("voc-det", tiny_alexnet(["data.image_size=48", "data.num_images=8"]))
    assert recipe.data.image_size != recipe.backbone.cfg.image_size
    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    before = trunk.backbone.fc6[1].weight.clone()
    rescaled(trunk, recipe)
    assert not torch.equal(trunk.backbone.fc6[1].weight, before)


def test_a_pretrained_trunk_keeps_its_function_only_its_parametrisation_changes() -> None:
    """magic_init on loaded weights: only the between-layer calibration, which leaves the function alone (the
    within-layer step would re-centre every channel of a bn=false trunk)."""
    net, x = _net(bn=False), torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        before = net(x, taps=("fc7",))["fc7"]
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    rescale(net, x, TAPS, iterations=3, pretrained=True)
    with torch.no_grad():
        after = net(x, taps=("fc7",))["fc7"]
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-4)
    assert any(not torch.equal(weights[k], v) for k, v in net.state_dict().items())  # the rates did change
    random = _net(bn=False)
    rescale(random, x, TAPS, iterations=0)  # random weights: the within-layer step runs
    with torch.no_grad():
        assert not torch.allclose(random(x, taps=("fc7",))["fc7"], before, atol=1e-2)
