"""Table files: the deck's result tables as data (tables/<name>.toml), their schema and their validation.

A table file holds the paper's rows verbatim (cells as the seed's text, with bold / underline marks; a row may
name the method, variant, initialisation and backbone family it reports, so that an sslbench row is compared
with the right one), per column its metric, unit, the sslbench metric key that fills it (`fills_from`) and
the data set the paper measured it on, and a `[reproduce]` plan: the pretrainings and evaluations whose
results fill the sslbench rows. Every file is validated when it is loaded: an unknown key, a wrong type, a
row of the wrong width or a `fills_from` no protocol reports is an error naming the file and the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sslbench.config import build
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.registry import PROTOCOLS, unknown_name_message
from sslbench.runtime import bundled, user_folders

PRETRAIN_TIME = "pretrain/time"  # the pseudo-metric of a "Pretraining time" column: the pretraining's wall time
MARKS = ("", "bold", "underline")


def tables_dir() -> Path:
    """sslbench's own table files (the installed package's copy, or the checkout's)."""
    return bundled("tables")


def table_dirs() -> list[Path]:
    """Where table files are looked up, first match wins: $SSLBENCH_TABLES's folders, then sslbench's own."""
    return [*user_folders("tables"), tables_dir()]


def _table_file(name: str) -> Path | None:
    return next((d / f"{name}.toml" for d in table_dirs() if (d / f"{name}.toml").is_file()), None)


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Column:
    header: tuple[str, ...]  # the column's header text, one entry per header level
    metric: str = ""  # what the cells measure (mAP, top-1, ...)
    unit: str = ""
    fills_from: str = ""  # the sslbench metric key of this column ('voc-det/mAP', 'pretrain/time'; '' = none)
    paper_dataset: str = ""  # where the paper measured this column ('' = the table's paper_dataset)

    @property
    def flat(self) -> str:
        """'Group/Sub' with empty levels dropped and repeated levels merged (CSV / JSON field name)."""
        parts = [h for h in self.header if h]
        return "/".join(dict.fromkeys(parts)) if parts else ""


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[str, ...]
    marks: tuple[str, ...] = ()  # per cell: '', 'bold' or 'underline' (empty: no marks)
    label_mark: str = ""
    method: str = ""  # the pretext task the row reports ('random', 'supervised'; '' = a method sslbench lacks)
    variant: str = ""  # the task's variant the row reports ('projection', 'rp+col'; '' = the method's only one)
    init: Literal["", "rescale"] = ""  # 'rescale': Kraehenbuehl et al.'s data-dependent rescaling first
    backbone: str = ""  # the architecture family, where a table mixes them ('vgg16'; '' = the table's usual one)
    source: Literal["paper", "sslbench"] = "paper"  # sslbench rows are built from the store, never in a file
    note: str = ""  # sslbench rows: the footnote with provenance


@dataclass(frozen=True)
class EvalSpec:
    protocol: str
    flavour: str = ""  # protocol recipe flavour: recipes/protocols/<protocol>/<scale>-<flavour>.toml
    set: tuple[str, ...] = ()  # recipe overrides, as --set takes them
    input: str = ""  # the trunk's transfer input, as eval --input takes it ('lab': Colorization's colour rows)

    def describe(self) -> str:
        flavour = f"[{self.flavour}]" if self.flavour else ""
        return (self.protocol + flavour + (f" {' '.join(self.set)}" if self.set else "")
                + (f" --input {self.input}" if self.input else ""))


@dataclass(frozen=True)
class RunSpec:
    task: str  # a pretext task, or "random" for the random-init baselines
    flavour: str = ""  # pretraining recipe flavour
    set: tuple[str, ...] = ()  # pretraining recipe overrides
    init: Literal["default", "rescale"] = "default"  # "rescale" (Kraehenbuehl et al.) before every protocol
    like: str = ""  # random only: random init of this task's trunk (its default recipe) as it transfers
    protocols: tuple[EvalSpec | str, ...] = ()  # a protocol name, or a table naming flavour / set

    @property
    def evals(self) -> tuple[EvalSpec, ...]:
        return tuple(EvalSpec(p) if isinstance(p, str) else p for p in self.protocols)

    @property
    def pretrained(self) -> str:
        """The task whose pretraining this run needs ('' for random init of the protocol recipe's trunk)."""
        return self.like if self.task == "random" else self.task


@dataclass(frozen=True)
class Reproduce:
    runs: tuple[RunSpec, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    seed_heading: str
    paper: str
    venue: str
    paper_table: str
    caption: str
    row_header: tuple[str, ...] | str
    notes: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    paper_dataset: str = ""  # where the paper measured (columns may name their own): an sslbench value gets a Δ
    plot: bool = False  # `--plot` draws this table's rows as accuracy by layer (the probe tables)
    reproduce: Reproduce = field(default_factory=Reproduce)

    @property
    def own(self) -> bool:
        """A table of sslbench's own (`compare`): no paper, no paper rows, every row from the store."""
        return not self.paper

    @property
    def levels(self) -> int:
        return len(self.columns[0].header) if self.columns else 1

    @property
    def headers(self) -> tuple[str, ...]:
        return (self.row_header,) if isinstance(self.row_header, str) else self.row_header

    def column_dataset(self, column: Column) -> str:
        return column.paper_dataset or self.paper_dataset


# ---------------------------------------------------------------- loading


def table_names() -> list[str]:
    return sorted({p.stem for d in table_dirs() for p in d.glob("*.toml") if p.stem != "groups"})


def groups() -> dict[str, list[str]]:
    """Every folder's groups.toml (a user folder's groups first: a name it repeats is its own), and "all"."""
    found: dict[str, list[str]] = {}
    for d in reversed(table_dirs()):
        path = d / "groups.toml"
        if path.is_file():
            found.update(tomllib.loads(path.read_text()))
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
    """tables/<name>.toml, validated (UserError naming the file and the key)."""
    load_all()  # the metric keys are checked against the registered protocols
    path = _table_file(name)
    if path is None:
        raise UserError(unknown_name_message("table", name, table_names()))
    where = f"tables/{name}.toml" if path.parent == tables_dir() else str(path)  # a user's file: its own path
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: not valid TOML ({exc})") from None
    if "rows" in raw and isinstance(raw["rows"], list):  # a row's source is always 'paper' in a file
        for i, row in enumerate(raw["rows"]):
            if isinstance(row, dict) and ("source" in row or "note" in row):
                raise UserError(f"{where} rows[{i}]: unknown key {'source' if 'source' in row else 'note'!r}; "
                                "sslbench rows come from the results store, not the file")
    table = build(Table, raw, where)
    check_table(table, where, name)
    return table


def check_table(t: Table, where: str, name: str) -> None:
    """What the types cannot say: shapes, marks, metric keys, the reproduce plan."""
    def fail(key: str, text: str) -> None:
        raise UserError(f"{where} {key}: {text}")

    if t.name != name:
        fail("name", f"{t.name!r} differs from the file name {name!r}")
    if not t.columns:
        fail("columns", "a table needs at least one column")
    if not t.rows and not t.own:
        fail("rows", f"a table of a paper ({t.paper!r}) needs its rows; a table of sslbench's own (no paper rows, "
                     "filled from the store alone) has paper = \"\"")
    if t.own and (t.venue or t.paper_table):
        fail("venue" if t.venue else "paper_table", "a table of sslbench's own (paper = \"\") names no venue or "
                                                     "paper table")
    if len({len(c.header) for c in t.columns}) != 1 or len(t.headers) != t.levels:
        fail("columns[].header", f"every header and row_header needs {t.levels} level(s)")
    headers = [c.header for c in t.columns]
    for i, c in enumerate(t.columns):
        if headers.index(c.header) != i:
            fail(f"columns[{i}].header", f"{list(c.header)} repeats columns[{headers.index(c.header)}]'s header; a "
                                         "reader could not tell the two columns apart")
    planned = {e.protocol for run in t.reproduce.runs for e in run.evals}
    keys = [c.fills_from for c in t.columns if c.fills_from]
    for i, c in enumerate(t.columns):
        if c.fills_from and c.fills_from != PRETRAIN_TIME:
            fill_problem = _fill_problem(c.fills_from, planned)
            if fill_problem:
                fail(f"columns[{i}].fills_from", fill_problem)
        if keys.count(c.fills_from) > 1:
            fail(f"columns[{i}].fills_from", f"{c.fills_from!r} fills two columns")
    labels = [r.label for r in t.rows]
    for i, r in enumerate(t.rows):
        if len(r.cells) != len(t.columns) or (r.marks and len(r.marks) != len(r.cells)):
            fail(f"rows[{i}]", f"{r.label!r} has {len(r.cells)} cells and {len(r.marks)} marks "
                               f"for {len(t.columns)} columns")
        bad = [m for m in (r.label_mark, *r.marks) if m not in MARKS]
        if bad:
            fail(f"rows[{i}].marks", f"{bad[0]!r}; valid: {', '.join(repr(m) for m in MARKS)}")
        if labels.count(r.label) > 1:
            fail(f"rows[{i}].label", f"{r.label!r} appears twice")
    for i, run in enumerate(t.reproduce.runs):
        if run.like and (run.task != "random" or run.flavour or run.set):
            fail(f"reproduce.runs[{i}].like", f"like = {run.like!r} belongs to a task = \"random\" run without flavour "
                 "or set (it initialises that task's default recipe trunk)")


def _fill_problem(key: str, planned: set[str]) -> str:
    """Why `key` cannot fill a column ('' if it can): its protocol must report it; a protocol not built yet
    must at least be in the table's plan (its columns stay '—' and the footnote says so)."""
    protocol = key.split("/", 1)[0]
    if "/" not in key:
        return f"{key!r}; expected '<protocol>/<metric>' (e.g. 'voc-det/mAP') or {PRETRAIN_TIME!r}"
    if protocol in PROTOCOLS:
        cls = PROTOCOLS.get(protocol)
        return "" if cls.fills(key) else f"{key!r} is not a key {protocol} reports ('{protocol}/{cls.metric_keys}')"
    if protocol in planned:
        return ""
    return f"{key!r}: no protocol {protocol!r} (registered: {', '.join(PROTOCOLS.names())}), nor one in [reproduce]"
