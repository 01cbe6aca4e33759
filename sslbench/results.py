"""The results store: one SQLite file (runs/results.sqlite, WAL mode), one row per (run, protocol, metric).

Rows carry their provenance (method, backbone, data set, scale, seed, code version, wall time, the
resolved recipe, the pretraining's recipe, how far an unfinished pretraining got, the unreadable images
skipped, the thread count) so that a table can say where every number of ours came from. Several processes
may write at once: WAL lets readers run beside one writer, and writers wait (busy timeout) instead of failing.
A store that cannot be written (read-only, not a database) is found by `check_store` before any work, and
every SQLite error is a one-line UserError naming the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sslbench.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,     -- evaluation run directory name
    protocol    TEXT NOT NULL,     -- e.g. 'linear'
    metric      TEXT NOT NULL,     -- full key, e.g. 'linear/conv3'
    value       REAL NOT NULL,
    method      TEXT NOT NULL,     -- pretext task name, or 'random'
    variant     TEXT NOT NULL,     -- task variant label, e.g. 'color-dropping' ('' if none)
    backbone    TEXT NOT NULL,     -- backbone label, e.g. 'alexnet-bn' or 'nin-4blocks'
    dataset     TEXT NOT NULL,     -- data set the protocol ran on, e.g. 'embedded' or 'voc2007'
    pretrain_dataset TEXT NOT NULL,-- data set the trunk was pretrained on ('' for random init)
    scale       TEXT NOT NULL,     -- 'mini' or 'paper'
    init        TEXT NOT NULL,     -- 'checkpoint', 'random', or '+rescale' variants
    seed        INTEGER NOT NULL,
    version     TEXT NOT NULL,     -- sslbench version + git commit
    wall_time   REAL NOT NULL,     -- seconds the protocol took
    checkpoint  TEXT NOT NULL,     -- checkpoint path or 'random'
    pretrain_run TEXT NOT NULL,    -- run id of the pretraining ('' for random init)
    recipe      TEXT NOT NULL,     -- resolved protocol recipe, JSON
    created_at  TEXT NOT NULL,     -- ISO time the row was written
    pretrain_recipe TEXT NOT NULL DEFAULT '', -- the trunk's pretraining recipe, JSON ('' for random / state dicts)
    unfinished  TEXT NOT NULL DEFAULT '',  -- where an unfinished pretraining stopped ('step 2 of 80'), '' if finished
    skipped     INTEGER NOT NULL DEFAULT 0, -- unreadable images the run skipped (train and test)
    threads     INTEGER NOT NULL DEFAULT 0  -- torch CPU threads of the run
);
CREATE INDEX IF NOT EXISTS results_metric ON results(metric);
CREATE TABLE IF NOT EXISTS pretrain_runs (
    run_id      TEXT PRIMARY KEY,
    method      TEXT NOT NULL,
    variant     TEXT NOT NULL,
    backbone    TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    scale       TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    version     TEXT NOT NULL,
    wall_time   REAL NOT NULL,
    checkpoint  TEXT NOT NULL,
    recipe_key  TEXT NOT NULL,     -- hash of the resolved recipe: equal keys = same experiment
    recipe      TEXT NOT NULL,
    metrics     TEXT NOT NULL,     -- final pretext metrics, JSON
    created_at  TEXT NOT NULL,
    skipped     INTEGER NOT NULL DEFAULT 0, -- distinct unreadable training images skipped
    threads     INTEGER NOT NULL DEFAULT 0  -- torch CPU threads of the run's last leg
);
"""
# Columns added after the first stores were written: an older store gets them (with their defaults) when opened.
ADDED = {
    "results": {"pretrain_recipe": "TEXT NOT NULL DEFAULT ''", "unfinished": "TEXT NOT NULL DEFAULT ''",
                "skipped": "INTEGER NOT NULL DEFAULT 0", "threads": "INTEGER NOT NULL DEFAULT 0"},
    "pretrain_runs": {"skipped": "INTEGER NOT NULL DEFAULT 0", "threads": "INTEGER NOT NULL DEFAULT 0"},
}


@dataclass(frozen=True)
class Provenance:
    """Where a number came from: everything a table footnote or a reuse decision needs."""

    run_id: str
    method: str
    variant: str
    backbone: str
    dataset: str
    pretrain_dataset: str
    scale: str
    init: str
    seed: int
    version: str
    checkpoint: str
    pretrain_run: str
    recipe: str
    pretrain_recipe: str = ""
    unfinished: str = ""
    skipped: int = 0
    threads: int = 0


@dataclass(frozen=True)
class ResultRow:
    protocol: str
    metric: str
    value: float
    wall_time: float
    created_at: str
    prov: Provenance


@dataclass(frozen=True)
class PretrainRow:
    run_id: str
    method: str
    variant: str
    backbone: str
    dataset: str
    scale: str
    seed: int
    version: str
    wall_time: float
    checkpoint: str
    recipe_key: str
    recipe: str
    metrics: dict[str, float]
    created_at: str
    skipped: int = 0
    threads: int = 0


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"results store {self.path}: cannot create its folder ({exc.strerror or exc})") from None
        with self._connect() as con:
            con.executescript(SCHEMA)
            _add_columns(con)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA busy_timeout=60000")
                yield con
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise UserError(_store_problem(self.path, exc)) from None

    def check_writable(self) -> None:
        """Take the write lock, write, roll back: a store that cannot be written fails here, before any work."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("CREATE TABLE sslbench_write_probe (x)")  # a real write, rolled back
            finally:
                con.execute("ROLLBACK")

    def add_results(self, protocol: str, metrics: dict[str, float], prov: Provenance, wall_time: float) -> None:
        """All metrics of one protocol run in one transaction: a table never sees half a run."""
        record = {**asdict(prov), "protocol": protocol, "wall_time": float(wall_time), "created_at": now_iso()}
        columns = [*record, "metric", "value"]
        rows = [(*record.values(), metric, float(value)) for metric, value in sorted(metrics.items())]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                f"INSERT INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows,
            )
            con.execute("COMMIT")

    def results(self, metric_prefix: str = "") -> list[ResultRow]:
        """Every result row whose metric starts with `metric_prefix`, in the order they were written."""
        row_fields = [f.name for f in fields(ResultRow) if f.name != "prov"]
        prov_fields = [f.name for f in fields(Provenance)]
        with self._connect() as con:
            con.row_factory = sqlite3.Row  # columns by name: a new field cannot shift the others
            cur = con.execute(
                f"SELECT {', '.join(row_fields + prov_fields)} FROM results WHERE metric LIKE ? ORDER BY id",
                (metric_prefix + "%",),
            )
            return [
                ResultRow(**{k: r[k] for k in row_fields}, prov=Provenance(**{k: r[k] for k in prov_fields}))
                for r in cur.fetchall()
            ]

    def add_pretrain_run(self, row: PretrainRow) -> None:
        d = asdict(row)
        d["metrics"] = json.dumps(row.metrics, sort_keys=True)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                f"INSERT OR REPLACE INTO pretrain_runs ({', '.join(d)}) VALUES ({', '.join('?' * len(d))})",
                tuple(d.values()),
            )
            con.execute("COMMIT")

    def pretrain_runs(self, recipe_key: str | None = None) -> list[PretrainRow]:
        query = "SELECT * FROM pretrain_runs"
        args: tuple[str, ...] = ()
        if recipe_key is not None:
            query += " WHERE recipe_key = ?"
            args = (recipe_key,)
        with self._connect() as con:
            cur = con.execute(query + " ORDER BY created_at", args)
            names = [c[0] for c in cur.description]
            out = []
            for values in cur.fetchall():
                d = dict(zip(names, values))
                d["metrics"] = json.loads(d["metrics"])
                out.append(PretrainRow(**d))
            return out


def default_store(runs_dir: str | Path) -> ResultStore:
    return ResultStore(Path(runs_dir) / STORE)


STORE = "results.sqlite"


def check_store(runs_dir: str | Path) -> None:
    """Before any work: the store under `runs_dir`, if there is one, opens and takes its write lock (a new one is
    created when the first result is written, by a --runs that check_runs_writable has checked)."""
    path = Path(runs_dir) / STORE
    if path.exists():
        ResultStore(path).check_writable()


def _add_columns(con: sqlite3.Connection) -> None:
    for table, columns in ADDED.items():
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        missing = {c: t for c, t in columns.items() if c not in have}
        if not missing:
            continue
        con.execute("BEGIN IMMEDIATE")  # another process may be adding them too: look again under the lock
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        for column, decl in missing.items():
            if column not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        con.execute("COMMIT")


def _store_problem(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        hint = "it is not a readable SQLite database: move it aside (a new one is made) or pass another --runs"
    elif "readonly" in text or "read-only" in text:
        hint = "it cannot be written: make it (and its folder) writable or pass another --runs"
    elif "unable to open" in text:
        hint = "it cannot be opened: check that its folder exists and is writable, or pass another --runs"
    else:
        hint = "pass another --runs if it stays"
    return f"results store {path}: {type(exc).__name__}: {text}; {hint}"
