"""tables/ data + the results store -> the deck's tables in the deck's layout, papers' rows and ours.

sslbench rows are built from the store: one per (method + variant + initialisation, backbone, scale, embedded
or real data; a method's VOC2007 and VOC2012 columns share a row), latest value per column and seed pair,
"—" where nothing was measured, and a Δ against the paper row of the same method, variant, initialisation
and backbone family, in the columns measured on the column's paper data set. Renderers: rich, markdown,
LaTeX, CSV, JSON, HTML; `plot` draws the probe tables.
"""

from __future__ import annotations

import html
import io
import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslbench.errors import UserError
from sslbench.planned import Plan
from sslbench.plugins import load_all
from sslbench.registry import PROTOCOLS, TASKS
from sslbench.results import ResultRow, ResultStore
from sslbench.runtime import atomic
from sslbench.tables import PRETRAIN_TIME, Column, Row, Table, load_table, table_names

DASH = "—"
FORMATS = ("rich", "markdown", "latex", "csv", "json", "html")
BASELINES = {"random": "Random", "supervised": "Supervised"}  # the rows that are no pretext task


def display_name(method: str) -> str:
    """The method's name in tables: a task's display name, Random, or the name itself (a plain state dict)."""
    if method in BASELINES:
        return BASELINES[method]
    return TASKS.get(method).display_name if method in TASKS else method


# ---------------------------------------------------------------- sslbench rows from the store


def number(text: str) -> float | None:
    """The leading number of a paper cell ('56.5%', '60.1 ± 1', '70.1[36]'), or None."""
    m = re.match(r"\s*(-?\d+(?:\.\d+)?)", text.replace("<", ""))
    return float(m.group(1)) if m and text.strip() not in ("-", DASH) else None


def fmt_value(value: float, column: Column) -> str:
    if column.fills_from == PRETRAIN_TIME:
        return f"{value / 60:.1f} min" if value < 3600 else f"{value / 3600:.1f} h"
    if column.metric == "count":
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


@dataclass(frozen=True)
class RowKey:
    """What makes an sslbench row: the rows of a table are the distinct keys of its results."""

    method: str
    variant: str
    rescaled: bool
    backbone: str
    scale: str
    embedded: bool
    differs: str = ""  # how the row's runs differ from the recipes of the table's plan ('' = they are those)

    @classmethod
    def of(cls, r: ResultRow, differs: str = "") -> RowKey:
        p = r.prov
        rescaled, embedded = p.init.endswith("+rescale"), p.dataset.startswith("embedded")
        # stores written before rescaling lived in `init` alone also said it in the method or the variant
        method = "random" if p.method == "random-rescaled" else p.method
        variant = p.variant.removesuffix("+rescale").removesuffix("rescale") if rescaled else p.variant
        return cls(method, variant, rescaled, p.backbone, p.scale, embedded, differs)

    @property
    def name(self) -> str:
        """'RotNet', 'Context (projection)', 'Jigsaw (rescale)', 'Random rescaled (jigsaw trunk)'."""
        if self.method == "random":
            return "Random" + (" rescaled" if self.rescaled else "") + (f" ({self.variant})" if self.variant else "")
        variant = "+".join(v for v in (self.variant, "rescale" if self.rescaled else "") if v)
        return display_name(self.method) + (f" ({variant})" if variant else "")


def paper_row(table: Table, key: RowKey) -> Row | None:
    """The paper's row an sslbench row is compared with: the same method and initialisation; among those, the
    rows naming the sslbench row's variant (else those naming none), then its backbone family (else those naming
    none). None unless exactly one row is left: no Δ rather than a Δ against another setting."""
    rows = [r for r in table.rows if r.method == key.method and r.init == ("rescale" if key.rescaled else "")]
    rows = [r for r in rows if r.variant == key.variant] or [r for r in rows if not r.variant]
    family = [r for r in rows if r.backbone and key.backbone.startswith(r.backbone)]
    rows = family or [r for r in rows if not r.backbone]
    return rows[0] if len(rows) == 1 else None


Found = dict[str, dict[tuple[Any, int], ResultRow]]  # metric -> (pretraining seed, evaluation seed) -> result


def sslbench_rows(table: Table, store: ResultStore | None) -> list[Row]:
    keys = {c.fills_from for c in table.columns if c.fills_from}
    if store is None or not keys - {PRETRAIN_TIME}:
        return []
    keys |= {k + SPREAD for k in keys}  # a protocol's own spread over its folds / splits (exemplar-svm)
    # Within a row, each metric keeps the latest result per seed pair (the pretraining's seed, the evaluation's);
    # every pair stored for the row counts, and several print as mean ± sample sd (n).
    # A row holds the runs of one RowKey; runs whose recipes are not the plan's are rows of their own, labelled.
    pretrains = store.pretrain_runs()
    pretrain_seed = {r.run_id: r.seed for r in pretrains}
    plan = Plan(table, {r.run_id: r.recipe for r in pretrains})
    grouped: dict[RowKey, Found] = {}
    for r in store.results():
        if r.metric in keys:
            seeds = (pretrain_seed.get(r.prov.pretrain_run), r.prov.seed)
            key = RowKey.of(r, plan.differs(r))
            grouped.setdefault(key, {}).setdefault(r.metric, {})[seeds] = r  # id order: the latest wins
    pretrain_time = {r.run_id: r.wall_time for r in pretrains} if PRETRAIN_TIME in keys else {}
    rows = [_sslbench_row(table, key, found, pretrain_time) for key, found in grouped.items()]
    return sorted(rows, key=lambda r: (r.method == "random", r.label))


def _sslbench_row(table: Table, key: RowKey, found: Found, pretrain_time: dict[str, float]) -> Row:
    results = [r for per_seed in found.values() for r in per_seed.values()]
    timed = {r.prov.pretrain_run: r for r in results if r.prov.pretrain_run in pretrain_time}
    if timed:  # the pretraining's wall time fills a "Pretraining time" column (mean over the pretrainings read)
        found[PRETRAIN_TIME] = {
            (i, 0): ResultRow("pretrain", PRETRAIN_TIME, pretrain_time[run], 0.0, r.created_at, r.prov)
            for i, (run, r) in enumerate(timed.items())
        }
    paper = paper_row(table, key)
    cells = tuple(_cell(table, c, found.get(c.fills_from), paper.cells[i] if paper else "",
                        found.get(c.fills_from + SPREAD)) for i, c in enumerate(table.columns))
    runs = sorted({(r.prov.run_id, r.created_at[:10]) for r in results})
    dataset = _datasets_label(sorted({r.prov.dataset for r in results}))
    names = dataset.split(":")[1].split("+") if ":" in dataset else []
    layouts = ", ".join("its own form" if n == "own" else n for n in names)
    layouts += " layouts" if len(names) > 1 else " layout"
    where = (f"the embedded synthetic data{' in ' + layouts if names else ''}"
             " (not the paper's data set)" if dataset.startswith("embedded") else dataset)
    label = f"{key.name} [{key.backbone}, {dataset}, {key.scale}]"
    if key.differs:
        label += f" {{not the plan's recipe: {key.differs}}}"
    note = (f"{label}: measured by sslbench on {where}, scale {key.scale}; "
            f"runs {', '.join(f'{rid} ({day})' for rid, day in runs)}")
    if key.differs:
        note += f"; its runs differ from the recipes of the table's [reproduce] plan: {key.differs}"
    skipped = sum(r.prov.skipped for r in {r.prov.run_id: r for r in results}.values())
    if skipped:
        note += f"; {skipped} unreadable image(s) skipped by its runs"
    seeds = sorted({r.prov.seed for r in results})
    if len(seeds) > 1:
        note += f"; seeds {', '.join(map(str, seeds))} (cells: mean ± sample sd over the seeds measured)"
    return Row(f"sslbench: {label}", cells, ("",) * len(cells), method=key.method, source="sslbench", note=note)


SPREAD = "/sd"  # the key suffix of a protocol's sd over its own folds / splits, printed as "mean ± sd"


def _cell(table: Table, column: Column, per_seed: dict[Any, ResultRow] | None, paper_cell: str,
          spread: dict[Any, ResultRow] | None = None) -> str:
    """mean (± sd (n) over seeds; with one seed, ± the protocol's own sd over its folds where it reports one)
    (Δ against the paper cell, when measured on the column's paper data set)."""
    if not per_seed:
        return DASH
    values = [r.value for r in per_seed.values()]
    mean = statistics.fmean(values)
    text = fmt_value(mean, column)
    if column.fills_from == PRETRAIN_TIME or column.metric == "count":  # a count (#features): no spread, no Δ
        return text
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.2f} (n={len(values)})"
    elif spread and set(spread) == set(per_seed) and all(spread[k].prov.run_id == per_seed[k].prov.run_id
                                                          for k in per_seed):
        text += f" ± {next(iter(spread.values())).value:.2f}"
    on_paper_data = all(r.prov.dataset == table.column_dataset(column) for r in per_seed.values())
    ref = number(paper_cell) if on_paper_data else None
    return text + (f" (Δ {mean - ref:+.1f})" if ref is not None else "")


def _datasets_label(datasets: list[str]) -> str:
    """'embedded:voc2007' + 'embedded:voc2012' -> 'embedded:voc2007+voc2012'; real ones joined with '+'."""
    if datasets and all(d.startswith("embedded:") for d in datasets):
        return "embedded:" + "+".join(d.split(":", 1)[1] for d in datasets)
    if len(datasets) > 1 and all(d == "embedded" or d.startswith("embedded:") for d in datasets):
        return "embedded:" + "+".join(d.split(":", 1)[1] if ":" in d else "own" for d in datasets)  # + its own form
    return "+".join(datasets)


def all_rows(table: Table, store: ResultStore | None) -> list[Row]:
    return list(table.rows) + sslbench_rows(table, store)


def missing_tasks(table: Table) -> list[str]:
    """Pretext tasks the table's sslbench rows need that are not built yet."""
    load_all()
    needed = dict.fromkeys(run.pretrained for run in table.reproduce.runs if run.pretrained)
    return [f"pretext task {t!r} (not built yet)" for t in needed if t not in TASKS]


def missing_columns(table: Table) -> list[str]:
    """Columns whose protocol is not built yet: they stay '—' for sslbench rows, and the footnote says so."""
    load_all()
    out = []
    for c in table.columns:
        protocol = c.fills_from.split("/")[0]
        if c.fills_from and c.fills_from != PRETRAIN_TIME and protocol not in PROTOCOLS:
            out.append(f"{c.flat or c.fills_from} (needs protocol {protocol!r})")
    return out


# ---------------------------------------------------------------- renderers


def render_group(tables: list[Table], store: ResultStore | None, fmt: str) -> str:
    """Several tables as one document: JSON, an object {"tables": [...]} of the tables' JSON; CSV, one long table
    (table, source, row, column, cell) since the tables' columns differ; the other formats one after the other.
    One table is `render`'s document."""
    if len(tables) == 1:
        return render(tables[0], store, fmt)
    if fmt == "json":
        docs = [json.loads(to_json(table_frame(t, store))) for t in tables]
        return json.dumps({"tables": docs}, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        import pandas as pd

        long = pd.concat([_long(table_frame(t, store)) for t in tables], ignore_index=True)
        return long.to_csv(index=False, lineterminator="\n")
    return "\n".join(render(t, store, fmt) for t in tables)


def render(table: Table, store: ResultStore | None, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "rich":
        return to_text(table, all_rows(table, store))
    return {"markdown": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json,
            "html": to_html}[fmt](table_frame(table, store))


def _footnotes(table: Table, rows: list[Row]) -> list[str]:
    caption = f" {table.caption}" if table.caption else ""
    if table.own:
        notes = ["sslbench's own table (no paper has it; every row is measured by sslbench)." + caption]
    else:
        notes = [f"Paper: {table.paper}, {table.venue}, {table.paper_table}." + caption]
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
        rh = table.headers[level] if level < len(table.headers) else ""
        out.append([rh] + [c.header[level] for c in table.columns])
    return out


def _marks(r: Row) -> tuple[str, ...]:
    return r.marks if r.marks else ("",) * len(r.cells)


# ---------------------------------------------------------------- the table as a DataFrame


def table_frame(table: Table | str, store: ResultStore | None = None):  # noqa: ANN201 - pandas.DataFrame
    """The table as a pandas DataFrame, for notebooks and for every renderer but rich.

    One row per paper row then per sslbench row, indexed by (source, row label); the columns are the deck's
    header levels (a MultiIndex where the table has several, their names the row-label column's header at each
    level); cells are the printed text ('56.5%', '60.1 ± 1', '31.20 (Δ -4.3)', '—'). `frame.attrs` holds the
    table's name, title, paper, venue, paper_table, fields (each column's flat CSV / JSON name), footnotes, and
    the bold / underline marks: `marks` ({(source, row): one mark per cell}) and `label_marks` ({(source, row):
    the label's mark}), keyed like the index so that a slice of the frame keeps its rows' marks."""
    if isinstance(table, str):
        table = load_table(table)
    return frame_of(table, all_rows(table, store))


def frame_of(table: Table, rows: list[Row]):  # noqa: ANN201 - pandas.DataFrame
    """`table_frame` of rows already built (`all_rows`)."""
    import pandas as pd

    headers = _header_rows(table)
    names = [h[0] or None for h in headers]
    if table.levels == 1:
        columns = pd.Index([c.header[0] for c in table.columns], name=names[0])
    else:
        columns = pd.MultiIndex.from_tuples([c.header for c in table.columns], names=names)
    index = pd.MultiIndex.from_tuples([(r.source, r.label) for r in rows], names=["source", "row"])
    frame = pd.DataFrame([list(r.cells) for r in rows], index=index, columns=columns, dtype=object)
    fields: dict[str, str] = {"table": "", "source": ""}
    fields[_unique_key(fields, "/".join(h for h in table.headers if h) or "row")] = ""
    for c in table.columns:
        fields[_unique_key(fields, c.flat or c.fills_from or "col")] = ""
    frame.attrs.update(name=table.name, title=table.title, paper=table.paper, venue=table.venue,
                       paper_table=table.paper_table, fields=list(fields)[2:],
                       footnotes=_footnotes(table, rows), marks={(r.source, r.label): _marks(r) for r in rows},
                       label_marks={(r.source, r.label): r.label_mark for r in rows})
    return frame


def _marked(frame, mark: Callable[[str, str], str], escape: Callable[[str], str]):  # noqa: ANN001, ANN202
    """A copy of `frame` with every cell and row label escaped for the output format and its mark applied;
    indexed by the row label alone (the renderers' first column)."""
    import pandas as pd

    marks, label_marks = frame.attrs["marks"], frame.attrs["label_marks"]
    cells = [[mark(escape(c), m) for c, m in zip(row, marks[key], strict=True)]
             for key, row in zip(frame.index, frame.itertuples(index=False))]
    labels = [mark(escape(label), label_marks[(source, label)]) for source, label in frame.index]
    if isinstance(frame.columns, pd.MultiIndex):
        columns = pd.MultiIndex.from_tuples([tuple(escape(h) for h in c) for c in frame.columns],
                                            names=[escape(n) if n else None for n in frame.columns.names])
    else:
        columns = pd.Index([escape(h) for h in frame.columns], name=escape(frame.columns.name or "") or None)
    return pd.DataFrame(cells, index=pd.Index(labels), columns=columns, dtype=object)


def _sslbench_start(frame) -> int | None:  # noqa: ANN001
    """The position of the first sslbench row (renderers draw a rule above it), or None."""
    sources = list(frame.index.get_level_values("source"))
    return sources.index("sslbench") if "sslbench" in sources else None


def _long(frame):  # noqa: ANN001, ANN202
    """The table in long form (table, source, row, column, cell): the CSV of a group of tables."""
    flat = _flat(frame)
    label = flat.columns[2]
    flat.insert(0, "_row", range(len(flat)))  # row by row, columns in the table's order
    long = flat.melt(id_vars=["_row", "table", "source", label], var_name="column", value_name="cell")
    long = long.rename(columns={label: "row"})
    order = {f: i for i, f in enumerate(frame.attrs["fields"][1:])}
    long["_column"] = long["column"].map(order)
    long = long.sort_values(["_row", "_column"], kind="stable")
    return long.drop(columns=["_row", "_column"]).reset_index(drop=True)


def _flat(frame):  # noqa: ANN001, ANN202
    """One record per row: table, source, row label, then each cell under its flat (unique) column name."""
    import pandas as pd

    label_key, *fields = frame.attrs["fields"]
    flat = pd.DataFrame(frame.to_numpy(), columns=fields, dtype=object)
    flat.insert(0, label_key, list(frame.index.get_level_values("row")))
    flat.insert(0, "source", list(frame.index.get_level_values("source")))
    flat.insert(0, "table", frame.attrs["name"])
    return flat


def _md_mark(text: str, mark: str) -> str:
    if not text:
        return ""
    return f"**{text}**" if mark == "bold" else f"<u>{text}</u>" if mark == "underline" else text


def _md_escape(text: str) -> str:
    """Backslashes, then pipes, escaped: a pipe in a cell cannot end it."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(frame) -> str:  # noqa: ANN001
    """A pipe table (tabulate), the header levels joined with ' / ', then the footnotes as a list."""
    from tabulate import tabulate

    body = _marked(frame, _md_mark, _md_escape)
    levels = [frame.columns.get_level_values(i) for i in range(frame.columns.nlevels)]
    names = [n or "" for n in frame.columns.names]
    top = [" / ".join(dict.fromkeys(n for n in names if n))]
    top += [" / ".join(dict.fromkeys(p for p in parts if p)) for parts in zip(*levels)]
    top = [_md_escape(h) for h in top]
    rows = [[label, *cells] for label, cells in zip(body.index, body.itertuples(index=False))]
    text = tabulate(rows, headers=top, tablefmt="github", disable_numparse=True,
                    colalign=("left",) + ("right",) * len(frame.columns))
    notes = [f"- {n}" for n in frame.attrs["footnotes"]]
    return "\n".join([f"**{frame.attrs['title']}** ({frame.attrs['name']})", "", text, "", *notes]) + "\n"


LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                 "±": r"$\pm$", "×": r"$\times$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "Δ": r"$\Delta$",
                 "—": "---", "°": r"$^\circ$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def _tex_mark(text: str, mark: str) -> str:
    return rf"\textbf{{{text}}}" if mark == "bold" and text else (
        rf"\underline{{{text}}}" if mark == "underline" and text else text)


def to_latex(frame) -> str:  # noqa: ANN001
    """A booktabs table (pandas' Styler.to_latex; group headers as \\multicolumn), a rule above the sslbench rows,
    the footnotes under the tabular."""
    body = _marked(frame, _tex_mark, latex_escape)
    caption = f"{latex_escape(frame.attrs['title'])} ({latex_escape(frame.attrs['name'])})"
    text = body.style.to_latex(environment="table", position="t", position_float="centering", hrules=True,
                               caption=caption, multicol_align="c", column_format="l" + "c" * len(frame.columns))
    lines = text.rstrip("\n").splitlines()
    first = _sslbench_start(frame)
    if first:  # the rule above the sslbench rows (none when there are no paper rows above them)
        at = lines.index(r"\midrule") + 1 + first
        lines.insert(at, r"\midrule")
    notes = [rf"\par\footnotesize {latex_escape(n)}" for n in frame.attrs["footnotes"]]
    end = lines.index(r"\end{table}")
    return "\n".join(lines[:end] + notes + lines[end:]) + "\n"


def _html_mark(text: str, mark: str) -> str:
    return f"<b>{text}</b>" if mark == "bold" and text else f"<u>{text}</u>" if mark == "underline" and text else text


def to_html(frame) -> str:  # noqa: ANN001
    """A <section> holding the table (pandas' Styler.to_html: group headers span their columns; sslbench rows
    carry class "sslbench") and its footnotes as a list."""
    import pandas as pd
    from pandas.io.formats.style import Styler

    body = _marked(frame, _html_mark, html.escape)
    name = frame.attrs["name"]
    styler = Styler(body, uuid=re.sub(r"[^A-Za-z0-9_-]", "_", name), cell_ids=False)
    source = list(frame.index.get_level_values("source"))
    classes = pd.DataFrame([[s] * len(frame.columns) for s in source], index=body.index, columns=body.columns)
    styler.set_td_classes(classes)  # row labels and column headers are unique (check_table, sslbench_rows)
    table = styler.to_html(table_attributes='class="sslbench"', caption=html.escape(frame.attrs["title"]))
    table = re.sub(r"<style type=\"text/css\">\s*</style>\s*", "", table)  # no per-cell styles: no empty block
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in frame.attrs["footnotes"])
    return (f"<section class=\"sslbench-table\" id=\"{html.escape(name)}\">\n{table.strip()}\n"
            f"<ol class=\"footnotes\">{notes}</ol>\n</section>\n")


def to_csv(frame) -> str:  # noqa: ANN001
    """One record per row (table, source, row label, each column under its flat name)."""
    return _flat(frame).to_csv(index=False, lineterminator="\n")


def to_json(frame) -> str:  # noqa: ANN001
    rows = json.loads(_flat(frame).to_json(orient="records", force_ascii=False))
    a = frame.attrs
    return json.dumps({"table": a["name"], "title": a["title"], "paper": a["paper"], "venue": a["venue"],
                       "paper_table": a["paper_table"], "rows": rows, "footnotes": a["footnotes"]},
                      indent=2, ensure_ascii=False) + "\n"


def first_sslbench(rows: list[Row], row: Row) -> bool:
    """Whether `row` opens the sslbench rows (rich draws a rule above it)."""
    return row.source == "sslbench" and next(r for r in rows if r.source == "sslbench") is row


def _unique_key(rec: dict[str, str], key: str) -> str:
    if key not in rec:
        return key
    i = 2
    while f"{key} ({i})" in rec:
        i += 1
    return f"{key} ({i})"


RICH_WIDTH = 200  # when stdout is not a terminal: wide enough for the 21-column VOC table


def to_text(table: Table, rows: list[Row]) -> str:
    """Plain text (what `rich` prints when output is not a terminal); the rich table is `rich_table`."""
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=RICH_WIDTH, force_terminal=False, color_system=None).print(rich_table(table, rows))
    return buf.getvalue()


def rich_table(table: Table, rows: list[Row]):  # noqa: ANN201 - rich.table.Table
    from rich.markup import escape
    from rich.table import Table as RichTable

    title = f"{table.name}: {table.title} ({table.venue or 'sslbench'}" + (
        f", {table.paper_table})" if table.paper_table else ")")
    t = RichTable(title=escape(title), title_justify="left", show_lines=False)
    headers = _header_rows(table)
    for i in range(len(headers[0])):
        text = "\n".join(h[i] for h in headers)
        first = i == 0
        t.add_column(escape(text), justify="left" if first else "right", no_wrap=not first,
                     min_width=24 if first else None)
    for r in rows:
        if first_sslbench(rows, r):
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
    if not t or mark not in ("bold", "underline"):
        return t
    return f"[{mark}]{t}[/{mark}]"


# ---------------------------------------------------------------- plots


def check_plot(target: Path, tables: list[Table]) -> None:
    """Before any work: `--plot TARGET` needs a probe table among `tables` and a file name matplotlib can write."""
    if not any(t.plot for t in tables):
        names = ", ".join(t.name for t in tables)
        raise UserError(f"--plot draws the probe tables only ({', '.join(plottable())}); {names} has none")
    if target.is_dir():
        raise UserError(f"--plot {target} is a directory; give a file name, e.g. {target / 'layers.png'}")
    from matplotlib.backend_bases import FigureCanvasBase

    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = target.suffix.lower().removeprefix(".")
    if suffix not in supported:
        raise UserError(f"--plot {target}: expected a file name ending in .{', .'.join(supported)}, "
                        f"found {'.' + suffix if suffix else 'no extension'}")


def plot(table: Table, store: ResultStore | None, out: Path) -> Path:
    """Accuracy by layer, a line per method: paper rows dashed, sslbench rows solid; written to `out`."""
    import matplotlib.pyplot as plt

    fig = plot_figure(table, all_rows(table, store))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic(out) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out


def plot_figure(table: Table, rows: list[Row]):  # noqa: ANN201 - matplotlib.figure.Figure
    """The figure `plot` writes, of the table's rows (`all_rows`); the caller closes it."""
    if not table.plot:
        raise UserError(f"--plot draws the probe tables only ({', '.join(plottable())}); {table.name!r} is not one")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [c.flat for c in table.columns]
    fig, ax = plt.subplots(figsize=(11, 5))
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
    return fig


def plottable() -> list[str]:
    """The tables `--plot` draws (their files say `plot = true`)."""
    return [n for n in table_names() if load_table(n).plot]
