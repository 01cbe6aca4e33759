"""`sslbench reproduce rotations` end to end at mini scale: RotNet beats random init on every probe column,
and a second call reuses every result from the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslbench import report
from sslbench.reproduce import Options, plan, reproduce
from sslbench.results import ResultStore


def test_plan_merges_runs_of_a_group() -> None:
    specs = plan(report.resolve("rotations"))
    random = [s for s in specs if s.task == "random" and s.init == "default"]
    assert len(random) == 1 and {e.protocol for e in random[0].evals} >= {"rotnet-blocks", "linear"}
    assert {(s.task, s.flavour, s.init) for s in specs} == {
        ("rotation", "", "default"), ("rotation", "alexnet", "default"), ("random", "", "default"), ("random", "", "rescale")}


@pytest.mark.slow
def test_reproduce_probe_tables_mini_rotnet_beats_random(tmp_path: Path) -> None:
    ran = 0
    for name in ("rotations-cifar", "rotations-linear"):
        names, summary = reproduce(name, Options(runs=tmp_path, device="cpu", progress=False))
        assert names == [name]
        ran += len(summary.ran)
    assert ran == 7  # two pretrainings, rotnet-blocks x2, linear x3 (rotation, random, random rescaled)
    store = ResultStore(tmp_path / "results.sqlite")
    for name in ("rotations-cifar", "rotations-linear"):
        table = report.load_table(name)
        rows = {r.method: r for r in report.sslbench_rows(table, store)}
        for i, col in enumerate(table.columns):
            ours, rand = rows["rotation"].cells[i], rows["random"].cells[i]
            if ours != report.DASH:
                assert float(ours) > float(rand), (name, col.flat, ours, rand)
    assert "random-rescaled" in {r.method for r in report.sslbench_rows(report.load_table("rotations-linear"), store)}
    _, again = reproduce("rotations-linear", Options(runs=tmp_path, device="cpu", progress=False))
    assert again.ran == [] and len(again.reused) == 4
