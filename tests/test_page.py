"""`sslbench report OUT.html`: one self-contained page, checked in a real browser (headless Chromium)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslbench import page, tables
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.results import STORE, Provenance, ResultStore
from tests.conftest import tiny_alexnet, tiny_pretrain

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A page of every table over a store holding an inpainting pretraining, a VOC result read from it and a
    linear probe result (the probe plot's line)."""
    runs = tmp_path_factory.mktemp("page") / "runs"
    recipe = tiny_pretrain("inpainting", tiny_alexnet(["task.decoder_width=8", "task.mask=central"]))
    outcome = pretrain(recipe, runs, device="cpu", progress=False, argv=[])
    store = ResultStore(runs / STORE)
    prov = Provenance("eval-voc-cls-1", "inpainting", "", "alexnet-w0.125", "embedded:voc2007", "embedded", "mini",
                      "checkpoint", 0, "0.1.0+gtest", str(outcome.checkpoint), outcome.run_dir.name, "{}")
    store.add_results("voc-cls", {"voc-cls/all/mAP": 21.5}, prov, 3.0)
    linear = Provenance("eval-linear-1", "rotation", "", "alexnet-bn-w0.25", "embedded", "embedded", "mini",
                        "checkpoint", 0, "0.1.0+gtest", "c.pt", "rotation-1", "{}")
    store.add_results("linear", {f"linear/conv{i}": 10.0 * i for i in range(1, 6)}, linear, 5.0)
    return page.write_report(runs.parent / "report.html", "all", runs)


def report_plottable() -> list[str]:
    return [n for n in tables.table_names() if tables.load_table(n).plot]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        a = dict(attrs)
        if tag == "table":
            self.tables.append(a.get("id", ""))
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key] or "")


def test_the_page_stands_alone_with_every_table_the_plot_and_the_sample_grid(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    parsed = _Page()
    parsed.feed(text)
    assert parsed.tables == [f"T_{n}" for n in tables.table_names()]
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in parsed.links), parsed.links
    assert "<link" not in text and "@import" not in text  # no stylesheet fetched
    plots = re.findall(r'<figure id="plot-([^"]+)"', text)
    assert plots == report_plottable() and "rotations-linear" in plots and "jigsaw" not in plots  # probe tables only
    (grid,) = re.findall(r'<figure id="samples-([^"]+)"', text)  # the inpainting checkpoint the VOC cell read
    assert grid.startswith("inpainting-") and text.count(f'id="samples-{grid}"') == 1
    # the same checkpoint's figures, each drawn once: attention maps, neighbours, its task's pretext batch
    assert re.findall(r'<figure id="(attention|neighbours|pretext)-([^"]+)"', text) == [
        ("attention", grid), ("neighbours", grid), ("pretext", "inpainting")]
    assert "21.50" in text and "sslbench: Context Encoders" in text


def test_bad_targets_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ending in .html"):
        page.write_report(tmp_path / "report.pdf", "all", tmp_path / "runs")
    with pytest.raises(UserError, match="a directory"):
        page.write_report(tmp_path, "all", tmp_path / "runs")
    with pytest.raises(UserError, match="unknown table"):
        page.write_report(tmp_path / "r.html", "jigsow", tmp_path / "runs")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere: the check cannot be exercised there
        with pytest.raises(UserError, match="not writable"):
            page.write_report(locked / "r.html", "all", tmp_path / "runs")
    assert list(tmp_path.iterdir()) == [locked] and not list(locked.iterdir())  # nothing half-written


def test_a_checkpoint_that_cannot_be_drawn_is_named_and_the_page_goes_on(report: Path, tmp_path: Path) -> None:
    from sslbench.results import PretrainRow

    row = PretrainRow("inpainting-x", "inpainting", "", "alexnet", "embedded", "mini", 0, "v", 1.0,
                      str(tmp_path / "gone.pt"), "k", "{}", {}, "2026-12-03")
    drawn, text = page._grid(row)
    assert not drawn and "no longer on disk" in text and "<img" not in text
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    drawn, text = page._grid(dataclasses.replace(row, checkpoint=str(tmp_path / "bad.pt")))
    assert not drawn and "not drawn (" in text


@pytest.mark.skipif(BROWSER is None, reason="needs Debian's chromium (the README's set-up installs it)")
def test_chromium_renders_the_page(report: Path, tmp_path: Path) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, *flags, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as png:
        assert png.size == (1280, 2400)
        pixels = np.asarray(png.convert("L"), dtype=np.float64)
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20  # text and rules drawn, not a blank page
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", report.as_uri()], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    parsed = _Page()
    parsed.feed(dom)
    assert parsed.tables == [f"T_{n}" for n in tables.table_names()]  # the browser's DOM holds every table
    # the plots, the sample grid, and the checkpoint's attention, neighbour and pretext figures
    assert len(parsed.images) == len(report_plottable()) + 4
