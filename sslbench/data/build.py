"""Build a recipe's data set through the DATASETS registry."""

from __future__ import annotations

from torch.utils.data import Dataset

from sslbench.config import DataConfig
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.registry import DATASETS

__all__ = ["build_dataset", "collate_skip_corrupt"]


def build_dataset(cfg: DataConfig, split: str, num: int = 0) -> Dataset:
    """The registered data set `cfg.dataset` at `cfg.image_size`; root '' means the embedded data."""
    factory = DATASETS.get(cfg.dataset)
    return factory(cfg.root or None, split, cfg.image_size, num, cfg.synth_seed)
