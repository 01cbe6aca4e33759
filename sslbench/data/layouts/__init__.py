"""The real data sets' on-disk layouts, one module each: the writer of the embedded data in that layout, the
registered data set that reads it, and what `sslbench data check` reads, registered as one `Layout` record.

Writers render the embedded procedural scenes (sslbench.data.synthetic) into the exact layouts of the
official releases, so every loader runs on the same code path for a synthetic sample as for the real
download. Each writer renders into a temporary folder next to its target and renames it into place
(`runtime.atomic`), so a failed or interrupted write leaves nothing half-written. Every list of layouts (the
`--format` choices, the splits `data check` reads, the layouts a mini recipe can read the embedded data in,
the ones with segmentation masks) is derived from the LAYOUTS registry: a new layout is one file here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslbench.errors import UserError
from sslbench.registry import DATASETS, LAYOUTS, unknown_name_message

Writer = Callable[[Path, int, int, int], Path]  # (out, images per split, image side, generator seed) -> folder
Sources = Callable[[str, int, int, int], list[tuple[str, int]]]  # (split, per split, side, seed) -> (split, index)s


@dataclass(frozen=True)
class Layout:
    """One real on-disk layout."""

    name: str  # the registered data set that reads it, also the `--format` name
    folder: str  # the folder `write(out, ...)` writes under `out` ('VOCdevkit/VOC2007')
    tree: str  # what it looks like on disk, for help and errors
    write: Writer  # the embedded data written in this layout under `out`; returns the folder written
    sources: Sources  # the embedded sample (generator split, index) behind each item of a split, in reading order
    check_splits: tuple[str, ...]  # the splits `sslbench data check` reads
    aliases: tuple[str, ...] = ()  # other `--format` names (voc = voc2007)
    paired_trainval: bool = False  # trainval = train + val of `num` images each (VOC, SBD)
    fixed_size: int = 0  # the format fixes the image side (CIFAR-10 32, STL-10 96); 0 = the image_size asked for
    summarise: Callable[[str], str] | None = None  # root -> an extra sentence for `data check` (VOC's masks)
    # (root, split, image_size, num=0, exclude=()) -> (image, mask) pairs, for the layouts with segmentation masks
    segmentation: Callable[..., Any] | None = None
    # images per split of the real data set (what `--dry-run` counts steps with, before any file is read)
    sizes: dict[str, int] = field(default_factory=dict)


def register_layout(layout: Layout, reader: Callable[..., Any]) -> Layout:
    """Register a layout and the data set factory that reads it, under the layout's name."""
    reader.__name__ = layout.name
    DATASETS.register(layout.name)(reader)
    LAYOUTS.register(layout.name, summary=layout.tree)(layout)
    return layout


def layout_for(fmt: str) -> Layout:
    """The layout a `--format` name (or alias) stands for."""
    for name in LAYOUTS.names():
        layout = LAYOUTS.get(name)
        if fmt == name or fmt in layout.aliases:
            return layout
    raise UserError(unknown_name_message("data format", fmt, format_names()))


def format_names() -> list[str]:
    """Every `--format` name, aliases next to their layout."""
    out: list[str] = []
    for name in LAYOUTS.names():
        out += [*LAYOUTS.get(name).aliases, name]
    return out


def synth(fmt: str, out: Path, num: int, image_size: int, seed: int, force: bool = False) -> Path:
    """Write `num` images per split of the embedded data in format `fmt` under `out`; returns the folder written.
    Formats with a fixed image side (CIFAR-10, STL-10) ignore `image_size`.

    The data set is written into a staging folder inside `out`, then moved into place. A target folder that
    exists and is not empty (a real data set, perhaps) is refused unless `force`; with `force` the written files
    replace the files of the same names and nothing else in it is touched."""
    layout = layout_for(fmt)
    if not 1 <= num <= 1_000_000:
        raise UserError(f"--num expects 1 to 1000000 images per split, found {num}")
    out = Path(out)
    target = out / layout.folder
    if target.exists() and not force and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not empty; `data synth` does not write into a data set: "
                        "pass another --out, or --force to add its files (same names replaced, nothing removed)")
    made = _missing_parents(out)
    staging: Path | None = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".sslbench-synth-", dir=out))
        written = layout.write(staging, num, image_size, seed)
        _move_into(written, target)
        return target
    except OSError as exc:
        raise UserError(f"cannot write {fmt} under {out}: {exc.strerror or exc}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():  # nothing was written: the folders this call made go again
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _missing_parents(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _move_into(written: Path, target: Path) -> None:
    """Move the folder `written` to `target`: renamed if `target` does not exist, else file by file (each replaces
    the file of its name; nothing else in `target` is touched)."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written, target)
        return
    for src in sorted(written.rglob("*")):
        if src.is_file():
            dst = target / src.relative_to(written)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
