"""`sslbench report OUT.html`: the tables, their probe plots and the figures of their checkpoints, one page.

The page stands alone: the CSS is inline, the figures are PNGs embedded as data URIs, nothing is fetched. Each
table is the HTML renderer's section (the paper's rows, ours with their Δ, the footnotes with every row's
provenance); a probe table is followed by its accuracy-by-layer plot. Under a table whose sslbench rows read
pretrainings come `sslbench show`'s figures of those checkpoints: their attention maps and nearest neighbours side
by side (one figure per backbone), each task's pretext batch (once per task on the page), and the example grid of
a task that has one (Context Encoders' completions, Colorization's colourings, ...), each drawn once and linked
where another table reads the same checkpoints. A checkpoint no longer on disk, or one that cannot be drawn, is
named with the reason, and the page goes on.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path

from PIL import Image

from sslbench import report
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.results import STORE, PretrainRow, ResultRow, ResultStore
from sslbench.runtime import atomic, code_version
from sslbench.show import figure, pretext_kinds, showable
from sslbench.tables import PRETRAIN_TIME, Table, load_table, resolve

SAMPLES = 6  # images (rows) per sample grid
FIGURE_IMAGES = 3  # images (attention) and queries (neighbours) in the checkpoints' figures
MODELS = 4  # checkpoints compared in one attention / neighbours figure

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d232a; background: #fff; line-height: 1.4; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.5rem; border-bottom: 2px solid #2b6cb0; padding-bottom: .2rem; }
p.meta, p.source { color: #4a5568; font-size: .9rem; margin: .2rem 0 .8rem; }
nav ol { columns: 2; font-size: .92rem; }
table.sslbench { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
table.sslbench caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
table.sslbench th, table.sslbench td { border: 1px solid #cbd5e0; padding: .25rem .5rem; text-align: right; }
table.sslbench th.row_heading, table.sslbench th.index_name { text-align: left; }
table.sslbench thead th { background: #edf2f7; text-align: center; }
table.sslbench td.sslbench, table.sslbench tr:has(td.sslbench) th { background: #e6fffa; }
ol.footnotes { font-size: .78rem; color: #4a5568; max-width: 1300px; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #e2e8f0; image-rendering: pixelated; }
figcaption { font-size: .8rem; color: #4a5568; }
"""


def check_target(out: Path) -> None:
    """Before any work: OUT names an .html file that can be written."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"report {out}: a directory; give a file name, e.g. {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"report {out}: expected a file name ending in .html, found "
                        f"{out.suffix or 'no extension'}; e.g. {out.with_suffix('.html')}")
    parent = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"report {out}: {parent} is not a directory; choose another place for the page")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"report {out}: {parent} is not writable; choose another place for the page")


def write_report(out: Path, name: str = "all", runs: Path = Path("runs")) -> Path:
    """The page of the tables `name` (a table or group) and the store in `runs`, written atomically to `out`."""
    load_all()
    out = Path(out)
    check_target(out)
    tables = [load_table(n) for n in resolve(name)]
    store_path = Path(runs) / STORE
    store = ResultStore(store_path) if store_path.is_file() else None
    text = page(tables, store, store_path)
    try:
        with atomic(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"report {out}: could not write the page ({exc.strerror or exc}); choose another place") \
            from None
    return out


def page(tables: list[Table], store: ResultStore | None, store_path: Path) -> str:
    """The whole document."""
    grids: dict[str, str] = {}  # pretraining run -> its figure's id: drawn once however many tables read it
    results = store.results() if store is not None else []  # read once for every table's sample grids
    pretrains = store.pretrain_runs() if store is not None else []
    stored = f"{store_path} ({len(results)} results)" if store is not None else \
        f"{store_path} (none yet: the tables show the papers' rows)"
    head = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sslbench report</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        "<header>", "<h1>sslbench report</h1>",
        f'<p class="meta">sslbench {html.escape(code_version())}, {time.strftime("%Y-%m-%d %H:%M")}; '
        f"results store {html.escape(str(stored))}. Paper rows are the deck's; sslbench rows (shaded) come from "
        "the store, with Δ against the paper's row of the same setting where measured on the paper's data set."
        "</p>",
        "<nav><ol>" + "".join(f'<li><a href="#t-{html.escape(t.name)}">{html.escape(t.title)}</a> '
                              f"({html.escape(t.name)})</li>" for t in tables) + "</ol></nav>", "</header>", "<main>",
    ]
    body = [_table_section(t, store, used_pretrainings(t, results, pretrains), grids) for t in tables]
    return "\n".join(head + body + ["</main>", "</body>", "</html>"]) + "\n"


def _table_section(table: Table, store: ResultStore | None, drawable: list[PretrainRow], grids: dict[str, str]) -> str:
    rows = report.all_rows(table, store)  # once for the table and its plot
    frame = report.frame_of(table, rows)
    if table.own:
        source = "sslbench's own table: every row measured by sslbench, no paper rows"
    else:
        source = f"{table.paper}, {table.venue}" + (f", {table.paper_table}" if table.paper_table else "")
    if table.seed_heading:
        source += f"; seed heading: {table.seed_heading}"
    parts = [f'<section class="table" id="t-{html.escape(table.name)}">',
             f"<h2>{html.escape(table.title)}</h2>", f'<p class="source">{html.escape(source)}</p>',
             report.to_html(frame)]
    if table.plot:
        import matplotlib.pyplot as plt

        fig = report.plot_figure(table, rows)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        parts.append(_figure(buf.getvalue(), f"{table.name}: accuracy by layer (paper rows dashed, sslbench rows "
                                             "solid)", f"plot-{table.name}"))
    parts += _model_figures(drawable, grids)
    for run in drawable:
        if run.method in pretext_kinds() and run.method not in grids:  # each task's batch once on the page
            parts.append(_drawn(grids, f"pretext-{run.method}", "pretext", [run.checkpoint],
                                f"{run.method}: what make_batch builds from held-out images, with its labels "
                                f"({run.run_id})", SAMPLES // 2))
            grids[run.method] = f"pretext-{run.method}"
    for run in (r for r in drawable if r.method in showable()):
        if run.run_id in grids:  # drawn under an earlier table: a link to it, not the image again
            parts.append(f'<p class="meta">{html.escape(run.method)} samples of {html.escape(run.run_id)}: '
                         f'<a href="#{html.escape(grids[run.run_id])}">drawn above</a></p>')
            continue
        drawn, text = _grid(run)
        parts.append(text)
        if drawn:
            grids[run.run_id] = f"samples-{run.run_id}"
    parts.append("</section>")
    return "\n".join(parts)


def used_pretrainings(table: Table, results: list[ResultRow], pretrains: list[PretrainRow]) -> list[PretrainRow]:
    """The pretrainings (of the store's `pretrains`) the table's sslbench cells read among `results`, in store
    order."""
    keys = {c.fills_from for c in table.columns if c.fills_from and c.fills_from != PRETRAIN_TIME}
    read = {r.prov.pretrain_run for r in results if r.metric in keys}
    return [r for r in pretrains if r.run_id in read]


def _model_figures(runs: list[PretrainRow], drawn: dict[str, str]) -> list[str]:
    """The attention and neighbour figures of the table's checkpoints on disk, one pair per backbone (trunks of one
    architecture compared on the same images), the first MODELS of each."""
    parts, groups = [], {}
    for run in runs:
        if Path(run.checkpoint).is_file():
            groups.setdefault(run.backbone, []).append(run)
        else:
            parts.append(f'<p class="meta">{html.escape(run.run_id)}: no attention / neighbour figures (checkpoint '
                         f"{html.escape(run.checkpoint)} is no longer on disk).</p>")
    for backbone, group in groups.items():
        group = group[:MODELS]
        names = ", ".join(f"{r.method} {r.run_id}" for r in group)
        for kind, what in (("attention", "attention maps, sum over channels of |a|^p at three taps (RotNet Fig. 3)"),
                           ("neighbours", "nearest held-out images by cosine similarity of fc6 / pool5 features "
                                          "(Context Prediction Fig. 4)")):
            ident = f"{kind}-" + "-".join(r.run_id for r in group)
            parts.append(_drawn(drawn, ident, kind, [r.checkpoint for r in group], f"{what}: {names} ({backbone})",
                                FIGURE_IMAGES))
    return parts


def _drawn(drawn: dict[str, str], ident: str, kind: str, checkpoints: list[str], caption: str, num: int) -> str:
    """A figure of `kind` once on the page: drawn (recorded in `drawn`), a link to where it was, or why not."""
    if ident in drawn:
        return f'<p class="meta">{html.escape(caption)}: <a href="#{html.escape(ident)}">drawn above</a></p>'
    try:
        image = figure(kind, checkpoints, num)
    except (UserError, RuntimeError) as exc:  # a trunk this figure cannot read (no spatial tap, another size)
        return f'<p class="meta">{html.escape(caption)}: not drawn ({html.escape(str(exc).splitlines()[0])}).</p>'
    drawn[ident] = ident
    return _embedded(image, caption, ident)


def _embedded(image: Image.Image, caption: str, ident: str) -> str:
    """A drawn figure as a captioned PNG data URI, shown at twice its size (the panels are small)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return _figure(buf.getvalue(), caption, ident, width=image.width * 2)


def _grid(run: PretrainRow) -> tuple[bool, str]:
    """(whether it was drawn, its HTML): the figure, or a line saying why it is not drawn."""
    caption = f"{run.method} samples from {run.run_id} ({run.backbone}, {run.dataset}, seed {run.seed})"
    if not Path(run.checkpoint).is_file():
        why = f"checkpoint {run.checkpoint} is no longer on disk"
    else:
        try:
            image = figure(run.method, run.checkpoint, SAMPLES)
        except UserError as exc:  # a damaged checkpoint, its data set not on this machine: the page goes on
            why = str(exc)
        else:
            return True, _embedded(image, caption + ": inputs, predictions and targets on held-out images",
                                   f"samples-{run.run_id}")
    return False, f'<p class="meta">{html.escape(caption)}: not drawn ({html.escape(why)}).</p>'

def _figure(png: bytes, caption: str, ident: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{html.escape(ident)}"><img alt="{html.escape(caption)}"{size} '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')
