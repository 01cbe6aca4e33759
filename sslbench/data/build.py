"""Build a recipe's data set through the DATASETS registry.

A real data set named without a root (the mini recipes of the VOC protocols, say) reads the embedded data
written once in that data set's on-disk layout, so mini scale runs the same loader as a real download.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch.utils.data import Dataset

from sslbench.config import DataConfig
from sslbench.data.synthetic import GENERATOR_VERSION
from sslbench.errors import UserError
from sslbench.registry import DATASETS, LAYOUTS
from sslbench.runtime import cache_dir, file_lock

__all__ = ["build_dataset", "check_real_data", "dataset_label", "embedded_root", "embedded_split_size"]


def build_dataset(cfg: DataConfig, split: str, num: int = 0) -> Dataset:
    """The registered data set `cfg.dataset` at `cfg.image_size`; no root means the embedded data."""
    factory = DATASETS.get(cfg.dataset)
    root = cfg.root or (str(embedded_root(cfg)) if cfg.dataset in LAYOUTS else None)
    ds = factory(root, split, cfg.image_size, num, cfg.synth_seed)
    if cfg.train_crop != "center" and split == cfg.train_split:
        crops = getattr(ds, "random_crops", None)
        if crops is None:
            raise UserError(f"data.train_crop = {cfg.train_crop!r}: the {cfg.dataset} loader takes centre crops only "
                            "(random train-time crops: the imagenet layout); set data.train_crop = \"center\"")
        ds = crops(cfg.train_crop, cfg.load_size, cfg.load_area)
    if cfg.decode != "loader" and split == cfg.train_split:
        decoded_on = getattr(ds, "decoded_on", None)
        if decoded_on is None:
            raise UserError(f"data.decode = {cfg.decode!r}: the {cfg.dataset} loader decodes in its workers only "
                            "(decoding where the batch is built: the imagenet layout); set data.decode = \"loader\"")
        ds = decoded_on(cfg.decode)
    return ds


def check_real_data(cfg: DataConfig, scale: str) -> None:
    """A paper-scale run reads the real data set: without `--data NAME=PATH` it would train on the embedded sample
    written in that layout, which is a mini run under a paper recipe."""
    if scale == "paper" and not cfg.root and cfg.dataset in LAYOUTS:
        layout = LAYOUTS.get(cfg.dataset)
        raise UserError(f"--scale paper reads the real {cfg.dataset}: pass --data {cfg.dataset}=PATH "
                        f"({' '.join(layout.tree.split())}); `--scale mini` runs on the embedded data")


def dataset_label(cfg: DataConfig) -> str:
    """What a result was measured on, for the store and the tables: 'voc2007', or 'embedded:voc2007'."""
    if cfg.root or cfg.dataset not in LAYOUTS:
        return cfg.dataset
    return f"embedded:{cfg.dataset}"


def embedded_split_size(cfg: DataConfig, split: str) -> int:
    """Images per split of the embedded data `embedded_root` writes for `cfg` (trainval of a paired layout: two)."""
    layout = LAYOUTS.get(cfg.dataset)
    half = math.ceil(cfg.num_images / 2) if layout.paired_trainval else cfg.num_images
    per_split = max(cfg.num_test, half, 16)
    return 2 * per_split if layout.paired_trainval and split == "trainval" else per_split


def embedded_root(cfg: DataConfig, dataset: str = "") -> Path:
    """The embedded data written (once, cached) in the layout of `dataset` (default `cfg.dataset`), sized for
    the recipe. The VOC layouts and SBD are sized alike, so SBD's images are the VOC2012 root's and more."""
    layout = LAYOUTS.get(dataset or cfg.dataset)
    half = math.ceil(cfg.num_images / 2) if layout.paired_trainval else cfg.num_images  # trainval = 2 x per split
    per_split = max(cfg.num_test, half, 16)
    name = f"{layout.name}-v{GENERATOR_VERSION}-{cfg.image_size}px-{per_split}-s{cfg.synth_seed}"
    path = cache_dir() / "formats" / name
    done = path / ".complete"
    with file_lock(path.with_name(f".{name}.lock")):  # DDP ranks, parallel runs: one writes, the others read
        if not done.is_file():
            layout.write(path, per_split, cfg.image_size, cfg.synth_seed)
            done.write_text("written by sslbench.data.build.embedded_root\n")
    return path
