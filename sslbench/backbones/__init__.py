"""Backbones with named taps. Probes and transfer heads only ever ask for taps by name."""

import importlib
import pkgutil

from sslbench.backbones.base import Backbone, TapInfo, backbone_label, build_backbone

# Every module of this package registers itself on import: a new one is one file, no list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Backbone", "TapInfo", "backbone_label", "build_backbone"]
