"""Transfer protocols: one file each; importing this package registers them all."""

import importlib
import pkgutil

from sslbench.protocols.base import EvalOutcome, Protocol, evaluate

# Every module of this package registers itself on import: a new one is one file, no list to edit.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EvalOutcome", "Protocol", "evaluate"]
