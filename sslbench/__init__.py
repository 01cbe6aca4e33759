"""sslbench: the classic self-supervised pretext tasks, their transfer protocols, and the papers' tables."""

__version__ = "0.1.0"
