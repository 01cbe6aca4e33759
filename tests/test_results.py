"""The SQLite results store: WAL mode, provenance round trip, concurrent writers lose nothing."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

from sslbench.results import ADDED, SCHEMA, Provenance, ResultStore


def _prov(run: str) -> Provenance:
    return Provenance(run_id=run, method="rotation", variant="", backbone="nin-4blocks", dataset="embedded",
                      pretrain_dataset="embedded", scale="mini", init="checkpoint", seed=0, version="0.1.0+gtest",
                      checkpoint="c.pt", pretrain_run="rotation-x", recipe="{}")


def _writer(path: str, worker: int, n: int) -> None:
    store = ResultStore(path)
    for i in range(n):  # one transaction per row: the most contention
        store.add_results("linear", {"linear/conv1": worker * 1000 + i}, _prov(f"w{worker}-{i}"), wall_time=1.0)


def test_round_trip_keeps_provenance(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    store.add_results("linear", {"linear/conv1": 12.5, "linear/conv2": 20.0}, _prov("r1"), wall_time=3.0)
    rows = store.results("linear/")
    assert [(r.metric, r.value) for r in rows] == [("linear/conv1", 12.5), ("linear/conv2", 20.0)]
    assert rows[0].prov == _prov("r1") and rows[0].wall_time == 3.0
    mode = sqlite3.connect(tmp_path / "results.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "results.sqlite")
    ResultStore(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 200)) for w in range(8)]  # 8 writers x 200 rows
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    rows = ResultStore(path).results()
    assert len(rows) == 8 * 200  # none lost
    assert len({(r.prov.run_id, r.metric) for r in rows}) == len(rows)


def test_a_store_of_an_older_schema_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    schema = SCHEMA
    for columns in ADDED.values():
        for column in columns:
            schema = "\n".join(line for line in schema.splitlines() if not line.strip().startswith(column + " "))
    con.executescript(schema.replace("created_at  TEXT NOT NULL,", "created_at  TEXT NOT NULL"))
    con.execute("INSERT INTO results (run_id, protocol, metric, value, method, variant, backbone, dataset, "
                "pretrain_dataset, scale, init, seed, version, wall_time, checkpoint, pretrain_run, recipe, created_at) "
                "VALUES ('old', 'linear', 'linear/conv1', 1.5, 'rotation', '', 'nin', 'embedded', '', 'mini', "
                "'checkpoint', 0, 'v', 1.0, 'c.pt', '', '{}', 't')")
    con.commit()
    con.close()
    (row,) = ResultStore(path).results()
    assert row.value == 1.5 and row.prov.skipped == 0 and row.prov.unfinished == "" and row.prov.threads == 0
