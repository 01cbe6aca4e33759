"""Backbone labels: what tells two trunks apart in the tables."""

from __future__ import annotations

from sslbench.backbones.alexnet import AlexNetConfig
from sslbench.backbones.base import backbone_label
from sslbench.backbones.nin import NINConfig


def test_a_gray_trunk_gets_its_own_label() -> None:
    assert backbone_label("alexnet", AlexNetConfig(width=0.25)) == "alexnet-bn-w0.25"
    assert backbone_label("alexnet", AlexNetConfig(width=0.25, in_channels=1)) == "alexnet-bn-w0.25-gray"
    assert backbone_label("nin", NINConfig(blocks=4, in_channels=1)) == "nin-4blocks-gray"
