"""Pretext tasks: one file each; importing this package registers them all."""

from sslbench.tasks import rotation  # noqa: F401
from sslbench.tasks.base import PretextTask

__all__ = ["PretextTask"]
