"""The SQLite results store: WAL mode, provenance round trip, concurrent writers lose nothing."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

from sslbench.results import Provenance, ResultStore


def _prov(run: str) -> Provenance:
    return Provenance(run_id=run, method="rotation", variant="", backbone="nin-4blocks", dataset="embedded",
                      pretrain_dataset="embedded", scale="mini", init="checkpoint", seed=0, version="0.1.0+gtest",
                      checkpoint="c.pt", pretrain_run="rotation-x", recipe="{}")


def _writer(path: str, worker: int, n: int) -> None:
    store = ResultStore(path)
    for i in range(n):
        store.add_results("linear", {f"linear/conv{k}": worker * 1000 + i + k / 10 for k in range(1, 6)},
                          _prov(f"w{worker}-{i}"), wall_time=1.0)


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
    procs = [ctx.Process(target=_writer, args=(path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = ResultStore(path).results()
    assert len(rows) == 4 * 25 * 5
    assert len({(r.prov.run_id, r.metric) for r in rows}) == len(rows)
