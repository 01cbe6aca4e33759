"""Supervised pretraining: the loss goes down on the embedded labels; every table with an ImageNet-labels row plans
a supervised run on the trunk its other rows use, and the run's results become that table's sslbench row."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sslbench import report, tables
from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import load_split
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.results import Provenance, ResultStore
from sslbench.training import build_optimizer
from tests.conftest import fit_losses, tiny_alexnet

# Tables whose paper rows include a supervised (ImageNet labels) reference. Exemplar-CNN's "Supervised state of the
# art" row is each data set's best supervised result, not features pretrained on labels: no sslbench twin.
WITH_SUPERVISED = [n for n in tables.table_names()
                   if any(r.method == "supervised" for r in tables.load_table(n).rows) and n != "exemplar"]


def _task(extra: list[str] | None = None):  # noqa: ANN202
    r = load_recipe("pretrain", "supervised", "mini", tiny_alexnet(extra), flavour="alexnet")
    return TASKS.get("supervised")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg)), r


def test_supervised_loss_goes_down_on_the_embedded_labels() -> None:
    torch.manual_seed(0)
    task, r = _task()
    split = load_split("unlabeled", 32, 32, 0)
    images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(split.labels, dtype=torch.long)
    opt = build_optimizer(task.parameters(), dataclasses.replace(r.optim, lr=1e-2))
    batch = task.make_batch(images, {"label": labels}, torch.Generator().manual_seed(0))
    losses = fit_losses(task, opt, [batch] * 30)
    late, early = sum(losses[-5:]) / 5, sum(losses[:3]) / 3
    assert late < 0.8 * early and late < math.log(20) - 0.5, losses  # well below chance (20 classes: ln 20)


def test_images_without_a_label_are_refused_in_one_line() -> None:
    task, _ = _task()
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(UserError, match="needs every image's class in 0..19; found -1..3"):
        task.make_batch(images, {"label": torch.tensor([-1, 3])}, torch.Generator())
    with pytest.raises(UserError, match="found none"):
        task.make_batch(images, {}, torch.Generator())


@pytest.mark.parametrize("name", WITH_SUPERVISED)
def test_every_imagenet_labels_row_has_a_planned_supervised_run(name: str) -> None:
    runs = [run for run in tables.load_table(name).reproduce.runs if run.task == "supervised"]
    assert runs, f"{name}: a paper row is supervised but [reproduce] plans no supervised run"
    others = [run for run in tables.load_table(name).reproduce.runs if run.task not in ("supervised", "random")]
    protocols = {e.protocol for run in others for e in run.evals}
    assert {e.protocol for run in runs for e in run.evals} <= protocols  # measured as the table's own rows are


def test_the_supervised_alexnet_is_the_trunk_the_alexnet_tables_transfer() -> None:
    sup = load_recipe("pretrain", "supervised", "mini", flavour="alexnet")
    rot = load_recipe("pretrain", "rotation", "mini", flavour="alexnet")
    cls = load_recipe("protocol", "voc-cls", "mini")
    assert sup.backbone == rot.backbone == cls.backbone  # the protocol recipe's random trunk, too
    assert (sup.data.train_split, sup.data.num_images, sup.data.image_size) == \
        (rot.data.train_split, rot.data.num_images, rot.data.image_size)
    assert (sup.optim, sup.schedule) == (rot.optim, rot.schedule)  # only the task differs from RotNet's row


def test_a_supervised_run_is_a_row_compared_with_the_papers_imagenet_labels_row(tmp_path) -> None:  # noqa: ANN001
    store = ResultStore(tmp_path / "results.sqlite")
    prov = Provenance("eval-linear-7", "supervised", "", "alexnet-bn-w0.25-s2", "imagenet", "imagenet", "mini",
                      "checkpoint", 0, "0.1.0+gtest", "c.pt", "supervised-1", "{}")
    store.add_results("linear", {f"linear/conv{i}": 10.0 * i for i in range(1, 6)}, prov, 5.0)
    (row,) = report.sslbench_rows(tables.load_table("rotations-linear"), store)
    assert row.label.startswith("sslbench: Supervised [alexnet-bn-w0.25-s2")
    assert row.cells[0] == "10.00 (Δ -9.3)"  # the paper's ImageNet labels conv1: 19.3
