"""`sslbench reproduce rotations` end to end at mini scale: RotNet beats random init on every probe column,
and a second call reuses every result from the store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sslbench import report, tables
from sslbench.reproduce import Options, plan, reproduce
from sslbench.results import ResultStore


def test_plan_merges_runs_of_a_group() -> None:
    specs = plan(tables.resolve("rotations"))
    random = [s for s in specs if s.task == "random" and s.init == "default" and not s.like]
    assert len(random) == 1 and {e.protocol for e in random[0].evals} >= {"rotnet-blocks", "linear"}
    assert {(s.task, s.flavour, s.init, s.like) for s in specs} == {
        ("rotation", "", "default", ""), ("rotation", "alexnet", "default", ""), ("random", "", "default", ""),
        ("random", "", "rescale", ""), ("colorization", "", "default", ""), ("random", "", "default", "colorization"),
        ("supervised", "alexnet", "default", "")}


@pytest.mark.parametrize("name", ["task-ensemble-pretraining", "task-ensemble-lasso"])
def test_every_paper_row_of_the_task_ensemble_has_a_planned_run_of_its_setting(name: str) -> None:
    """Each paper row (method, variant) is what one run of the table's plan will store: the pretraining's task and
    variant as its recipe builds it, '+eval-lasso' where the evaluation's head reads the lasso."""
    from sslbench.backbones.base import build_backbone
    from sslbench.plugins import load_all
    from sslbench.recipes import load_recipe
    from sslbench.registry import TASKS

    load_all()
    table = tables.load_table(name)
    planned: set[tuple[str, str]] = set()
    for spec in table.reproduce.runs:
        variant = ""
        if spec.pretrained:
            recipe = load_recipe("pretrain", spec.pretrained, "mini", spec.set, flavour=spec.flavour)
            task = TASKS.get(spec.pretrained)(recipe.component.cfg, build_backbone(recipe.backbone.name,
                                                                                  recipe.backbone.cfg))
            variant = task.variant()
        for ev in spec.evals:
            lasso = "protocol.lasso.enabled=true" in ev.set
            planned.add((spec.task, "+".join(v for v in (variant, "eval-lasso" if lasso else "") if v)))
    for row in table.rows:
        ok = (row.method, row.variant) in planned or (not row.variant and row.method in {m for m, _ in planned})
        assert ok, f"{name}: paper row {row.label!r} ({row.method}, {row.variant!r}) has no planned run: {planned}"


@pytest.mark.slow
def test_reproduce_probe_table_mini_rotnet_and_colorization_beat_random(tmp_path: Path) -> None:
    """The whole path on one table (rotations-cifar's is the same code with the NIN; one table keeps CI short):
    RotNet beats random init, and Colorization beats random init of its own 1-channel trunk, on every layer."""
    names, summary = reproduce("rotations-linear", Options(runs=tmp_path, device="cpu", progress=False))
    assert names == ["rotations-linear"]
    # three pretrainings (RotNet, Colorization, supervised); linear x6 (rotation, random, random rescaled,
    # colorization, its trunk, supervised)
    assert len(summary.ran) == 9
    store = ResultStore(tmp_path / "results.sqlite")
    table = tables.load_table("rotations-linear")
    rows = {r.label.split(" [")[0]: r for r in report.sslbench_rows(table, store)}
    for ours, rand in (("RotNet", "Random"), ("Colorization (gray)", "Random (colorization trunk)")):
        for i, col in enumerate(table.columns):
            a, b = rows[f"sslbench: {ours}"].cells[i], rows[f"sslbench: {rand}"].cells[i]
            if a != report.DASH:
                assert float(a) > float(b), (ours, col.flat, a, b)
    assert "sslbench: Random rescaled" in rows and "sslbench: Supervised" in rows  # beside "ImageNet labels"
    _, again = reproduce("rotations-linear", Options(runs=tmp_path, device="cpu", progress=False))
    assert again.ran == [] and len(again.reused) == 10  # the 6 evaluations and 4 pretraining lookups


def _fake_world(monkeypatch, runs: list[dict]) -> tuple[list, list]:  # noqa: ANN001
    """reproduce over a made-up table, with pretrain / evaluate replaced by recorders (no training)."""
    import types

    import sslbench.reproduce as rp
    from sslbench.config import build
    from sslbench.tables import Reproduce

    plan = build(Reproduce, {"runs": runs}, "tables/fake.toml [reproduce]")
    table = types.SimpleNamespace(reproduce=plan)
    monkeypatch.setattr(rp, "resolve", lambda name: [name])
    monkeypatch.setattr(rp, "load_table", lambda name: table)
    trained, evaluated = [], []

    def fake_pretrain(recipe, runs_dir, device, progress, argv, resume=False):  # noqa: ANN001, ANN202
        trained.append((recipe.name, recipe.seed))
        run_dir = runs_dir / f"{recipe.name}-{recipe.seed}"
        return types.SimpleNamespace(checkpoint=run_dir / "checkpoint.pt", run_dir=run_dir, wall_time=1.0,
                                     metrics={"loss": 1.5})

    def fake_evaluate(recipe, checkpoint, runs_dir, device, progress, argv, init, transfer_input=""):  # noqa: ANN001, ANN202
        evaluated.append((str(checkpoint), recipe.seed))
        rebuilt = ("fc6",) if str(checkpoint) == "random" else ()
        return types.SimpleNamespace(run_dir=runs_dir / "eval-1", wall_time=1.0,
                                     metrics={"voc-det/mAP": 50.0, "voc-det/AP/cat": 3.0}, reinitialised=rebuilt)

    monkeypatch.setattr(rp, "pretrain", fake_pretrain)
    monkeypatch.setattr(rp, "evaluate", fake_evaluate)
    return trained, evaluated


LIKE_RUNS = [{"task": "context", "protocols": ["voc-det"]}, {"task": "random", "protocols": ["voc-det"]},
             {"task": "random", "like": "context", "protocols": ["voc-det"]}]


def test_random_like_a_task_evaluates_that_tasks_trunk_freshly_initialised(tmp_path: Path, monkeypatch) -> None:
    """`{task = "random", like = "context"}` reads the context run's checkpoint as `random:CKPT`, without
    pretraining context a second time (also under --force, where nothing comes from the store)."""
    trained, evaluated = _fake_world(monkeypatch, LIKE_RUNS)
    assert [(s.task, s.like) for s in plan(["fake"])] == [("context", ""), ("random", ""), ("random", "context")]
    _, summary = reproduce("fake", Options(runs=tmp_path, device="cpu", progress=False, force=True))
    ckpt = str(tmp_path / "context-0" / "checkpoint.pt")
    assert trained == [("context", 0)] and [c for c, _ in evaluated] == [ckpt, "random", "random:" + ckpt]
    assert any("voc-det on random (context trunk)" in line for line in summary.ran)


def test_seeds_run_the_whole_plan_once_per_seed(tmp_path: Path, monkeypatch) -> None:
    trained, evaluated = _fake_world(monkeypatch, LIKE_RUNS)
    _, summary = reproduce("fake", Options(runs=tmp_path, device="cpu", progress=False, seeds=(0, 1)))
    assert trained == [("context", 0), ("context", 1)]
    like = [(c, s) for c, s in evaluated if c.startswith("random:")]
    assert like == [("random:" + str(tmp_path / f"context-{s}" / "checkpoint.pt"), s) for s in (0, 1)]
    assert len(evaluated) == 6 and any(line.startswith("voc-det on random [seed 1]") for line in summary.ran)


def test_each_run_is_one_line_as_it_finishes_and_a_log_gets_no_bars(tmp_path: Path, monkeypatch, capsys) -> None:
    from sslbench.progress import progress_bar

    _fake_world(monkeypatch, LIKE_RUNS)
    lines: list[str] = []
    reproduce("fake", Options(runs=tmp_path, device="cpu", progress=True, echo=lines.append))
    assert lines == ["ran     pretrain context (context-0, 1 s): loss 1.50",
                     "ran     voc-det on context (eval-1, 1 s): mAP 50.00",
                     "ran     voc-det on random (eval-1, 1 s): mAP 50.00 (re-initialised at the protocol's size: fc6)",
                     "reused  pretrain context (context-0)",
                     "ran     voc-det on random (context trunk) (eval-1, 1 s): mAP 50.00"]
    with progress_bar("steps", 3) as advance:  # stderr is not a terminal here: no bar, no blank line
        advance(3, "loss 1.0")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad", [{"task": "jigsaw", "like": "context"},
                                 {"task": "random", "like": "context", "flavour": "vgg"}])
def test_like_belongs_to_a_plain_random_run(bad: dict) -> None:
    from sslbench.config import build
    from sslbench.errors import UserError
    from sslbench.tables import Reproduce, check_table, load_table

    table = dataclasses.replace(load_table("jigsaw"), reproduce=build(Reproduce, {"runs": [{**bad, "protocols": ["voc-det"]}]}, "x"))
    with pytest.raises(UserError, match="like = 'context' belongs to a task"):
        check_table(table, "tables/jigsaw.toml", "jigsaw")


@pytest.mark.parametrize("scale", ["mini", "paper"])
@pytest.mark.parametrize("name", tables.table_names())
def test_every_recipe_of_every_tables_plan_loads_at_both_scales(name: str, scale: str) -> None:
    from sslbench.registry import PROTOCOLS, TASKS
    from sslbench.reproduce import plan_recipe

    opts = Options(scale=scale)
    for spec in plan([name]):
        if spec.pretrained in TASKS:
            flavour, overrides = ("", ()) if spec.like else (spec.flavour, spec.set)
            assert plan_recipe("pretrain", spec.pretrained, opts, overrides, flavour).name == spec.pretrained
        for ev in spec.evals:
            if ev.protocol in PROTOCOLS:
                assert plan_recipe("protocol", ev.protocol, opts, ev.set, ev.flavour).name == ev.protocol
