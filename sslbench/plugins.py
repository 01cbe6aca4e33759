"""The composition root: which plugin packages make up sslbench.

Registration happens when a module is imported; `load_all` imports every public module of the plugin
packages (a new backbone, task, protocol or data layout is one file, no list to edit). Modules whose name
starts with an underscore are private helpers and are left to their importers.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

PLUGIN_PACKAGES = ("sslbench.backbones", "sslbench.data", "sslbench.data.layouts", "sslbench.tasks",
                   "sslbench.protocols")


@functools.cache
def load_all() -> None:
    """Import every module that registers something (idempotent)."""
    for name in PLUGIN_PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_") and not module.ispkg:
                importlib.import_module(f"{name}.{module.name}")
