"""Backbones with named taps. Probes and transfer heads only ever ask for taps by name."""

from sslbench.backbones import alexnet, nin  # noqa: F401  (registration)
from sslbench.backbones.base import Backbone, TapInfo, backbone_label, build_backbone

__all__ = ["Backbone", "TapInfo", "backbone_label", "build_backbone"]
