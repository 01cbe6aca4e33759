"""tables/ data + the results store -> the deck's tables in the deck's layout, papers' rows and ours.

A table file (tables/<name>.toml) holds the paper's rows verbatim (cells as the seed's text, with bold /
underline marks) and, per column, the sslbench metric key that fills it. sslbench rows are built from the
store: one per (method + variant, backbone, scale, embedded or real data; a method's VOC2007 and VOC2012 columns share
a row), latest value per column, "—" where nothing was measured. Renderers: rich, markdown, LaTeX, CSV, JSON, HTML.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslbench.config import repo_root
from sslbench.errors import UserError
from sslbench.registry import unknown_name_message
from sslbench.results import ResultRow, ResultStore

DASH = "—"
FORMATS = ("rich", "markdown", "latex", "csv", "json", "html")
METHOD_NAMES = {
    "rotation": "RotNet", "jigsaw": "Jigsaw", "context": "Context", "inpainting": "Context Encoders",
    "colorization": "Colorization", "damaged-jigsaw": "CDJP", "exemplar": "Exemplar-CNN",
    "multitask": "Task Ensemble", "random": "Random", "random-rescaled": "Random rescaled",
}


def tables_dir() -> Path:
    return repo_root() / "tables"


@dataclass(frozen=True)
class Column:
    header: tuple[str, ...]
    metric: str
    unit: str
    fills_from: str

    @property
    def flat(self) -> str:
        """'Group/Sub' with empty levels dropped and repeated levels merged (CSV / JSON field name)."""
        parts = [h for h in self.header if h]
        return "/".join(dict.fromkeys(parts)) if parts else ""


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[str, ...]
    marks: tuple[str, ...] = ()
    label_mark: str = ""
    method: str = ""
    source: str = "paper"  # 'paper' or 'sslbench'
    note: str = ""  # sslbench rows: the footnote with provenance


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    paper: str
    venue: str
    paper_table: str
    caption: str
    seed_heading: str
    row_header: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    paper_dataset: str = ""
    reproduce: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return len(self.columns[0].header) if self.columns else 1


# ---------------------------------------------------------------- loading


def table_names() -> list[str]:
    return sorted(p.stem for p in tables_dir().glob("*.toml") if p.stem != "groups")


def groups() -> dict[str, list[str]]:
    path = tables_dir() / "groups.toml"
    found = tomllib.loads(path.read_text()) if path.is_file() else {}
    return {**found, "all": table_names()}


def resolve(name: str) -> list[str]:
    """A table or group name -> the table names it stands for."""
    g = groups()
    if name in g:
        return list(g[name])
    if name in table_names():
        return [name]
    raise UserError(unknown_name_message("table", name, table_names() + sorted(g)))


def load_table(name: str) -> Table:
    path = tables_dir() / f"{name}.toml"
    if not path.is_file():
        raise UserError(unknown_name_message("table", name, table_names()))
    raw = tomllib.loads(path.read_text())
    columns = tuple(Column(tuple(c["header"]), c.get("metric", ""), c.get("unit", ""), c.get("fills_from", ""))
                    for c in raw["columns"])
    rows = tuple(
        Row(r["label"], tuple(r["cells"]), tuple(r.get("marks", [""] * len(columns))), r.get("label_mark", ""),
            r.get("method", ""))
        for r in raw["rows"]
    )
    rh = raw.get("row_header", [""])
    return Table(
        name=raw["name"], title=raw.get("title", ""), paper=raw.get("paper", ""), venue=raw.get("venue", ""),
        paper_table=raw.get("paper_table", ""), caption=raw.get("caption", ""),
        seed_heading=raw.get("seed_heading", ""), row_header=tuple([rh] if isinstance(rh, str) else rh),
        columns=columns, rows=rows, notes=tuple(raw.get("notes", [])), paper_dataset=raw.get("paper_dataset", ""),
        reproduce=raw.get("reproduce", {}),
    )


# ---------------------------------------------------------------- sslbench rows from the store


def number(text: str) -> float | None:
    """The leading number of a paper cell ('56.5%', '60.1 ± 1', '70.1[36]'), or None."""
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)", text.replace("<", ""))
    return float(m.group(1)) if m and text.strip() not in ("-", DASH) else None


def fmt_value(value: float, column: Column) -> str:
    if column.fills_from == "pretrain/time":
        return f"{value / 60:.1f} min" if value < 3600 else f"{value / 3600:.1f} h"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


def sslbench_rows(table: Table, store: ResultStore | None) -> list[Row]:
    keys = {c.fills_from for c in table.columns if c.fills_from}
    if store is None or not keys - {"pretrain/time"}:
        return []
    # one row per (method + variant, backbone, scale, embedded or real data): a method's VOC2007 columns and
    # its VOC2012 segmentation column share a row; the label lists the data sets it was measured on
    # Within a row, each metric keeps the latest result per seed pair (the pretraining's seed, the evaluation's);
    # every pair stored for the row counts, and several print as mean ± sample sd (n).
    pretrains = store.pretrain_runs()
    pretrain_seed = {r.run_id: r.seed for r in pretrains}
    groups: dict[tuple[str, str, str, str, bool], dict[str, dict[tuple[int | None, int], ResultRow]]] = {}
    for r in store.results():
        if r.metric in keys:  # (pretrain/time is not a result row: it is added per group below)
            key = (r.prov.method, r.prov.variant, r.prov.backbone, r.prov.scale, r.prov.dataset.startswith("embedded"))
            seeds = (pretrain_seed.get(r.prov.pretrain_run), r.prov.seed)
            groups.setdefault(key, {}).setdefault(r.metric, {})[seeds] = r  # id order: the latest wins
    pretrain_time = {r.run_id: r.wall_time for r in pretrains} if "pretrain/time" in keys else {}
    out = []
    for (method, variant, backbone, scale, _), found in groups.items():
        results = [r for per_seed in found.values() for r in per_seed.values()]
        timed = {r.prov.pretrain_run: r for r in results if r.prov.pretrain_run in pretrain_time}
        if timed:  # the pretraining's wall time fills a "Pretraining time" column (mean over the pretrainings read)
            found["pretrain/time"] = {(i, 0): ResultRow("pretrain", "pretrain/time", pretrain_time[run], 0.0, r.created_at,
                                                        r.prov) for i, (run, r) in enumerate(timed.items())}
        cells, marks = [], []
        paper_row = _paper_row(table, method) if table.paper_dataset else None
        for i, c in enumerate(table.columns):
            per_seed = found.get(c.fills_from)
            if not per_seed:
                cells.append(DASH)
            else:
                values = [r.value for r in per_seed.values()]
                mean = statistics.fmean(values)
                text = fmt_value(mean, c)
                if len(values) > 1 and c.fills_from != "pretrain/time":
                    text += f" ± {statistics.stdev(values):.2f} (n={len(values)})"
                on_paper_data = c.fills_from != "pretrain/time" and all(
                    r.prov.dataset == table.paper_dataset for r in per_seed.values())
                ref = number(paper_row.cells[i]) if paper_row and on_paper_data else None
                cells.append(text + (f" (Δ {mean - ref:+.1f})" if ref is not None else ""))
            marks.append("")
        name = METHOD_NAMES.get(method, method) + (f" ({variant})" if variant else "")
        runs = sorted({(r.prov.run_id, r.created_at[:10]) for r in results})
        dataset = _datasets_label(sorted({r.prov.dataset for r in results}))
        layouts = dataset.split(":")[1] if ":" in dataset else ""
        where = (f"the embedded synthetic data{' in ' + layouts + ' layout' if layouts else ''}"
                 " (not the paper's data set)" if dataset.startswith("embedded") else dataset)
        note = (f"{name} [{backbone}, {dataset}, {scale}]: measured by sslbench on {where}, scale {scale}; "
                f"runs {', '.join(f'{rid} ({day})' for rid, day in runs)}")
        seeds = sorted({r.prov.seed for r in results})
        if len(seeds) > 1:
            note += f"; seeds {', '.join(map(str, seeds))} (cells: mean ± sample sd over the seeds measured)"
        out.append(Row(f"sslbench: {name} [{backbone}, {dataset}, {scale}]", tuple(cells), tuple(marks),
                       method=method, source="sslbench", note=note))
    return sorted(out, key=lambda r: (r.method == "random", r.label))


def _datasets_label(datasets: list[str]) -> str:
    """'embedded:voc2007' + 'embedded:voc2012' -> 'embedded:voc2007+voc2012'; real ones joined with '+'."""
    if datasets and all(d.startswith("embedded:") for d in datasets):
        return "embedded:" + "+".join(d.split(":", 1)[1] for d in datasets)
    return "+".join(datasets)


def _paper_row(table: Table, method: str) -> Row | None:
    candidates = [r for r in table.rows if r.method == method]
    return candidates[-1] if candidates else None


def all_rows(table: Table, store: ResultStore | None) -> list[Row]:
    return list(table.rows) + sslbench_rows(table, store)


def missing_tasks(table: Table) -> list[str]:
    """Pretext tasks the table's sslbench rows need that are not built yet."""
    from sslbench.registry import TASKS, load_all

    load_all()
    runs = table.reproduce.get("runs", [])
    needed = dict.fromkeys(r.get("like", "") if r["task"] == "random" else r["task"] for r in runs)
    needed.pop("", None)
    return [f"pretext task {t!r} (not built yet)" for t in needed if t not in TASKS]


def missing_columns(table: Table) -> list[str]:
    """Columns whose protocol is not built yet: they stay '—' for sslbench rows, and the footnote says so."""
    from sslbench.registry import PROTOCOLS, load_all

    load_all()
    out = []
    for c in table.columns:
        protocol = c.fills_from.split("/")[0]
        if c.fills_from and protocol not in ("pretrain",) and protocol not in PROTOCOLS:
            out.append(f"{c.flat or c.fills_from} (needs protocol {protocol!r})")
    return out


# ---------------------------------------------------------------- renderers


def render(table: Table, store: ResultStore | None, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    rows = all_rows(table, store)
    return {"markdown": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json, "html": to_html,
            "rich": to_text}[fmt](table, rows)


def _footnotes(table: Table, rows: list[Row]) -> list[str]:
    notes = [f"Paper: {table.paper}, {table.venue}, {table.paper_table}." + (f" {table.caption}" if table.caption else "")]
    notes += [r.note for r in rows if r.note]
    missing = missing_tasks(table) + missing_columns(table)
    if missing:
        notes.append("Not measured by sslbench yet: " + "; ".join(missing) + ".")
    elif not any(r.source == "sslbench" for r in rows):
        notes.append(f"No sslbench results in the store yet: run `sslbench reproduce {table.name}`.")
    return notes


def _header_rows(table: Table) -> list[list[str]]:
    """One list per header level: the label-column header then each column's text at that level."""
    out = []
    for level in range(table.levels):
        rh = table.row_header[level] if level < len(table.row_header) else ""
        out.append([rh] + [c.header[level] for c in table.columns])
    return out


def _md_cell(text: str, mark: str) -> str:
    text = text.replace("|", "\\|")
    if not text:
        return ""
    return f"**{text}**" if mark == "bold" else f"<u>{text}</u>" if mark == "underline" else text


def to_markdown(table: Table, rows: list[Row]) -> str:
    headers = _header_rows(table)
    top = headers[-1] if table.levels == 1 else [
        " / ".join(dict.fromkeys(p for p in parts if p)) for parts in zip(*headers)
    ]
    lines = [f"**{table.title}** ({table.name})", "", "| " + " | ".join(h.replace("|", "\\|") for h in top) + " |",
             "|" + "|".join(["---"] * len(top)) + "|"]
    for r in rows:
        cells = [_md_cell(r.label, r.label_mark)] + [_md_cell(c, m) for c, m in zip(r.cells, _marks(r))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {n}" for n in _footnotes(table, rows)]
    return "\n".join(lines) + "\n"


def _marks(r: Row) -> tuple[str, ...]:
    return r.marks if r.marks else ("",) * len(r.cells)


LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                 "±": r"$\pm$", "×": r"$\times$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "Δ": r"$\Delta$",
                 "—": "---", "°": r"$^\circ$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def _tex_cell(text: str, mark: str) -> str:
    t = latex_escape(text)
    return rf"\textbf{{{t}}}" if mark == "bold" and t else rf"\underline{{{t}}}" if mark == "underline" and t else t


def to_latex(table: Table, rows: list[Row]) -> str:
    n = len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)} ({latex_escape(table.name)})}}",
             rf"\begin{{tabular}}{{l{'c' * n}}}", r"\toprule"]
    for level, header in enumerate(_header_rows(table)):
        if level < table.levels - 1:  # group level: merge runs of equal names into \multicolumn
            cells, i = [latex_escape(header[0])], 1
            while i < len(header):
                j = i
                while j + 1 < len(header) and header[j + 1] == header[i]:
                    j += 1
                span = j - i + 1
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(header[i])}}}" if span > 1 else latex_escape(header[i]))
                i = j + 1
            lines.append(" & ".join(cells) + r" \\")
        else:
            lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    for r in rows:
        if r.source == "sslbench" and not any(x.source == "sslbench" for x in rows[: rows.index(r)]):
            lines.append(r"\midrule")
        cells = [_tex_cell(r.label, r.label_mark)] + [_tex_cell(c, m) for c, m in zip(r.cells, _marks(r))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\footnotesize {latex_escape(n_)}" for n_ in _footnotes(table, rows)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def records(table: Table, rows: list[Row]) -> list[dict[str, str]]:
    """One record per row: table, source, row label, then each cell under its flattened header."""
    label_key = "/".join(h for h in table.row_header if h) or "row"
    out = []
    for r in rows:
        rec = {"table": table.name, "source": r.source, label_key: r.label}
        for c, cell in zip(table.columns, r.cells):
            rec[_unique_key(rec, c.flat or c.fills_from or "col")] = cell
        out.append(rec)
    return out


def _unique_key(rec: dict[str, str], key: str) -> str:
    if key not in rec:
        return key
    i = 2
    while f"{key} ({i})" in rec:
        i += 1
    return f"{key} ({i})"


def to_csv(table: Table, rows: list[Row]) -> str:
    recs = records(table, rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(recs[0]))
    for rec in recs:
        writer.writerow(list(rec.values()))
    return buf.getvalue()


def to_json(table: Table, rows: list[Row]) -> str:
    return json.dumps({"table": table.name, "title": table.title, "paper": table.paper, "venue": table.venue,
                       "paper_table": table.paper_table, "rows": records(table, rows),
                       "footnotes": _footnotes(table, rows)}, indent=2, ensure_ascii=False) + "\n"


def _html_cell(tag: str, text: str, mark: str) -> str:
    t = html.escape(text)
    t = f"<b>{t}</b>" if mark == "bold" and t else f"<u>{t}</u>" if mark == "underline" and t else t
    return f"<{tag}>{t}</{tag}>"


def to_html(table: Table, rows: list[Row]) -> str:
    parts = [f"<table class=\"sslbench\" id=\"{html.escape(table.name)}\">",
             f"<caption>{html.escape(table.title)}</caption>", "<thead>"]
    for header in _header_rows(table):
        parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    parts.append("</thead>")
    parts.append("<tbody>")
    for r in rows:
        cls = f" class=\"{r.source}\""
        parts.append(f"<tr{cls}>" + _html_cell("th", r.label, r.label_mark)
                     + "".join(_html_cell("td", c, m) for c, m in zip(r.cells, _marks(r))) + "</tr>")
    parts.append("</tbody>")
    parts.append("<tfoot>" + "".join(f"<tr><td colspan=\"{len(table.columns) + 1}\">{html.escape(n)}</td></tr>"
                                     for n in _footnotes(table, rows)) + "</tfoot>")
    parts.append("</table>")
    return "\n".join(parts) + "\n"


RICH_WIDTH = 200  # when stdout is not a terminal: wide enough for the 21-column VOC table


def to_text(table: Table, rows: list[Row]) -> str:
    """Plain text (what `rich` prints when output is not a terminal); the rich table is `rich_table`."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=RICH_WIDTH, force_terminal=False, color_system=None).print(rich_table(table, rows))
    return buf.getvalue()


def rich_table(table: Table, rows: list[Row]):  # noqa: ANN201 - rich.table.Table
    from rich.table import Table as RichTable

    from rich.markup import escape

    title = f"{table.name}: {table.title} ({table.venue}" + (f", {table.paper_table})" if table.paper_table else ")")
    t = RichTable(title=escape(title), title_justify="left", show_lines=False)
    headers = _header_rows(table)
    for i in range(len(headers[0])):
        text = "\n".join(h[i] for h in headers)
        t.add_column(escape(text), justify="left" if i == 0 else "right", no_wrap=i > 0, min_width=24 if i == 0 else None)
    for r in rows:
        if r.source == "sslbench" and not any(x.source == "sslbench" for x in rows[: rows.index(r)]):
            t.add_section()
        style = "cyan" if r.source == "sslbench" else None
        cells = [_rich_cell(r.label, r.label_mark)] + [_rich_cell(c, m) for c, m in zip(r.cells, _marks(r))]
        t.add_row(*cells, style=style)
    t.caption = escape("\n".join(_footnotes(table, rows)))
    t.caption_justify = "left"
    return t


def _rich_cell(text: str, mark: str) -> str:
    from rich.markup import escape

    t = escape(text)
    return f"[bold]{t}[/bold]" if mark == "bold" and t else f"[underline]{t}[/underline]" if mark == "underline" and t else t


# ---------------------------------------------------------------- plots


PLOTTABLE = ("rotations-cifar", "rotations-linear")


def plot(table: Table, store: ResultStore | None, out: Path) -> Path:
    """Accuracy by layer, a line per method: paper rows dashed, sslbench rows solid."""
    if table.name not in PLOTTABLE:
        raise UserError(f"--plot draws the probe tables only ({', '.join(PLOTTABLE)}); {table.name!r} is not one")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [c.flat for c in table.columns]
    fig, ax = plt.subplots(figsize=(11, 5))
    rows = all_rows(table, store)
    colours = plt.get_cmap("tab20")(range(len(rows)))
    for r, colour in zip(rows, colours):
        values = [number(c.split(" (Δ")[0]) if c != DASH else None for c in r.cells]
        xs = [i for i, v in enumerate(values) if v is not None]
        if xs:
            ax.plot(xs, [values[i] for i in xs], "-" if r.source == "sslbench" else "--", color=colour,
                    marker="o", linewidth=2 if r.source == "sslbench" else 1, label=r.label)
    ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{table.columns[0].metric} ({table.columns[0].unit})")
    ax.set_title(table.title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
