"""Transfer protocols: one file each; importing this package registers them all."""

from sslbench.protocols import linear_probe, rotnet_blocks  # noqa: F401
from sslbench.protocols.base import EvalOutcome, Protocol, evaluate

__all__ = ["EvalOutcome", "Protocol", "evaluate"]
