"""The Task Ensemble: ResNet v2 and its unit taps, motion segmentation's masks and loss, the multitask recipe's
validation, every sub-task learning inside the composite, harmonised inputs and the lasso."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslbench.backbones.base import build_backbone
from sslbench.backbones.lasso import LassoCombination
from sslbench.backbones.resnet import PreActBottleneck, ResNetConfig
from sslbench.data.layouts import synth
from sslbench.data.synthetic import render_sample
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.registry import DATASETS, TASKS
from sslbench.tasks.motion_seg import cell_targets
from tests.conftest import fit_losses

TINY = ["backbone.width=0.0625", "data.num_images=8", "data.image_size=120", "data.batch_size=4",
        "schedule.epochs=1"]


# ---------------------------------------------------------------- ResNet v2, truncated, unit taps


def test_a_preactivation_unit_is_bn_relu_before_each_convolution() -> None:
    torch.manual_seed(0)
    unit = PreActBottleneck(8, 4, stride=2).eval()
    for bn in (unit.bn1, unit.bn2, unit.bn3):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 9, 9)

    def bn(m: torch.nn.BatchNorm2d, v: torch.Tensor) -> torch.Tensor:
        return (v - m.running_mean.view(1, -1, 1, 1)) / (m.running_var.view(1, -1, 1, 1) + m.eps).sqrt() \
            * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    pre = bn(unit.bn1, x).clamp_min(0)
    y = F.conv2d(pre, unit.conv1.weight)
    y = F.conv2d(bn(unit.bn2, y).clamp_min(0), unit.conv2.weight, stride=2, padding=1)
    y = F.conv2d(bn(unit.bn3, y).clamp_min(0), unit.conv3.weight, unit.conv3.bias)
    shortcut = F.conv2d(pre, unit.shortcut.weight, unit.shortcut.bias, stride=2)  # projection of the pre-activation
    torch.testing.assert_close(unit(x), shortcut + y)
    same = PreActBottleneck(16, 4).eval()
    assert same.shortcut is None  # identity shortcut where the shape is kept


@pytest.mark.parametrize("version", [1, 2])
def test_unit_taps_and_the_truncated_trunk(version: int) -> None:
    net = build_backbone("resnet", ResNetConfig(depth=101, width=0.0625, image_size=64, version=version,
                                                stages=3)).eval()
    assert [t for t in net.feature_info if t.startswith("res4_")] == [f"res4_{k}" for k in range(1, 24)]
    assert "res5" not in net.feature_info and net.dense_tap == net.spatial_tap == "res4" and net.region_tap is None
    x = torch.randn(2, 3, 64, 64)
    out = net(x, taps=("res3", "res4_1", "res4_23", "res4", "pool"))
    torch.testing.assert_close(out["res4_1"], net.layer3[0](out["res3"]))  # a unit's tap is that unit's output
    torch.testing.assert_close(out["res4"], out["res4_23"])  # the stage's tap is its last unit's
    torch.testing.assert_close(out["pool"], out["res4"].mean((2, 3)))
    assert out["res4"].shape[-1] == net.feature_info["res4"].size == 4  # stride 16
    with pytest.raises(UserError, match="region tap"):
        net.region_head()
    assert net.label(net.cfg) == f"resnet101{'-v2' if version == 2 else ''}-to-res4-w0.0625"


# ---------------------------------------------------------------- motion segmentation


def test_motion_masks_are_the_pixels_of_the_objects_that_move(tmp_path: Path) -> None:
    folder = synth("motion", tmp_path, 6, 48, 0)
    ds = DATASETS.get("motion")(str(folder), "train", 0, 0, 0)
    some = 0
    for i in range(6):
        s = render_sample(0, "unlabeled", i, 48, full=True)
        img, target = ds[i]
        mask, moved = target["motion"].numpy(), s.moving
        assert set(np.unique(mask)) <= {0, 1, 255}
        assert ((mask == 1) <= moved).all() and ((mask == 0) <= ~moved).all()  # 255 only on moving outlines
        assert ((mask == 255) <= moved).all()
        assert (s.moving <= s.motion).all()  # this frame's moving pixels are within either frame's
        some += int(moved.any())
        assert np.abs(img.permute(1, 2, 0).numpy().astype(float) - s.image).mean() < 4.0
        assert (Path(folder) / "next" / f"{i + 1:06d}.jpg").is_file()
    assert some >= 2  # the embedded scenes move objects
    task = TASKS.get("motion-seg")(TASKS.entry("motion-seg").config(),
                                   build_backbone("resnet", ResNetConfig(width=0.0625, image_size=64, stages=3)))
    with pytest.raises(UserError, match="motion-seg needs motion masks"):  # a data set without them
        task.make_batch(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), {"index": torch.arange(2)}, torch.Generator())


def test_cell_targets_are_the_share_of_moving_pixels_among_the_sure_ones() -> None:
    mask = torch.tensor([[[1, 1, 0, 0], [1, 255, 0, 255], [0, 0, 255, 255], [0, 1, 255, 255]]])
    share, valid = cell_targets(mask, (2, 2))
    torch.testing.assert_close(share, torch.tensor([[[1.0, 0.0], [0.25, 0.0]]]))  # 3/3 sure, 0/2, 1/4, none
    assert valid.tolist() == [[[True, True], [True, False]]]


def test_motion_seg_learns_a_planted_mask() -> None:
    torch.manual_seed(0)
    cls = TASKS.get("motion-seg")
    task = cls(TASKS.entry("motion-seg").config(flip=False),
               build_backbone("resnet", ResNetConfig(width=0.0625, image_size=64, stages=3)))
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    images[:, :, :, 32:] = 255  # the moving half is bright
    mask = torch.zeros(4, 64, 64, dtype=torch.long)
    mask[:, :, 32:] = 1
    batch = task.make_batch(images, {"index": torch.arange(4), "motion": mask}, torch.Generator().manual_seed(0))
    losses = fit_losses(task, torch.optim.Adam(task.parameters(), 1e-3), [batch] * 40)
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------- the multitask recipe


def _recipe_file(tmp_path: Path, sub: str = '[[task.tasks]]\nname = "motion-seg"', classes: int = 400) -> Path:
    base = (Path(__file__).parents[1] / "recipes" / "multitask" / "mini.toml").read_text()
    path = tmp_path / "r.toml"
    text = base.replace('[[task.tasks]]\nname = "motion-seg"', sub).replace("num_classes = 400", f"num_classes = {classes}")
    path.write_text(text)
    return path


def test_the_recipe_validates_every_sub_task_with_the_file_and_key(tmp_path: Path) -> None:
    bad_name = _recipe_file(tmp_path, '[[task.tasks]]\nname = "motoin-seg"')
    with pytest.raises(UserError, match=r"r\.toml \[task\]\.tasks\[3\]\.name: unknown task 'motoin-seg'.*motion-seg"):
        load_recipe("pretrain", "multitask", path=bad_name)
    bad_key = _recipe_file(tmp_path, '[[task.tasks]]\nname = "motion-seg"\n[task.tasks.cfg]\nflop = true')
    with pytest.raises(UserError, match=r"r\.toml \[task\]\.tasks\[3\]\.cfg \(motion-seg\): unknown key 'flop'"):
        load_recipe("pretrain", "multitask", path=bad_key)
    twice = _recipe_file(tmp_path, '[[task.tasks]]\nname = "context"')
    with pytest.raises(UserError, match="'context' appears twice"):
        load_recipe("pretrain", "multitask", path=twice)
    r = load_recipe("pretrain", "multitask")
    assert [t.name for t in r.component.cfg.tasks] == ["context", "colorization", "exemplar", "motion-seg"]
    assert r.component.cfg.tasks[0].cfg.gap == 8  # the sub-task's own config, typed


def _composite(tmp_path: Path, extra: list[str] | None = None):  # noqa: ANN202
    r = load_recipe("pretrain", "multitask", overrides=TINY + (extra or []), path=_recipe_file(tmp_path, classes=8))
    return TASKS.get("multitask")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg)), r


def _images_and_masks(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [render_sample(0, "unlabeled", i, size, full=True) for i in range(n)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack([s.moving for s in samples])).long()


@pytest.mark.parametrize("lasso", [False, True])
def test_every_sub_task_learns_inside_the_composite(lasso: bool, tmp_path: Path) -> None:
    torch.manual_seed(0)
    images, masks = _images_and_masks(8, 120)
    task, _ = _composite(tmp_path, ["task.lasso=true"] if lasso else [])
    task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
    batch = task.make_batch(images, {"index": torch.arange(8), "motion": masks}, torch.Generator().manual_seed(0))
    assert batch["context/patches"].shape[1] == 1 and batch["exemplar/input"].shape[1] == 1  # harmonised: L - 50
    opt = torch.optim.Adam([p for g in task.param_groups() for p in g["params"]], 2e-3)
    names = ("context", "colorization", "exemplar", "motion-seg")
    per_task: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(30):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        for n in names:
            per_task[n].append(float(out[f"{n}/loss"]))
    for n in names:
        first, last = np.mean(per_task[n][:3]), np.mean(per_task[n][-3:])
        assert last < 0.9 * first, (n, per_task[n])
    assert ("lasso_l1" in out) == lasso
    grouped = [p for g in task.param_groups() for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(task.parameters()))
    if lasso:  # the combination weights train at task.lasso_lr_scale of the rate, in a group of their own
        (alphas,) = [g for g in task.param_groups() if g.get("lr_scale") == task.cfg.lasso_lr_scale]
        assert {id(p) for p in alphas["params"]} == {id(s.backbone.lasso.alpha) for s in task.subtasks.values()}
    state = task.state_dict()
    assert not any(k.startswith("subtasks.") and ".backbone.trunk." in k for k in state)  # the trunk once
    assert task.transfer_input() == "lab-l" and task.variant() == "rp+col+ex+ms" + ("+lasso" if lasso else "")


def test_unharmonised_sub_tasks_must_feed_one_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="different inputs .*colorization lab-l.*harmonize"):
        _composite(tmp_path, ["task.harmonize=none"])
    with pytest.raises(UserError, match="in_channels is 3"):
        _composite(tmp_path, ["backbone.in_channels=3"])


def test_the_l1_term_drives_unused_combination_weights_to_zero() -> None:
    """Toy lasso: y depends on maps 0 and 2 of 5, plus noise. Least squares gives the three unused maps the small
    weights the noise suggests; with the L1 term they fall to ~0 while the used ones stay."""
    torch.manual_seed(0)
    maps = [torch.randn(64, 1, 1, 1) for _ in range(5)]
    y = 0.8 * maps[0] + 0.5 * maps[2] + 0.3 * torch.randn(64, 1, 1, 1)
    results = {}
    for l1 in (0.0, 0.1):
        comb = LassoCombination(5)
        comb.alpha.data.fill_(0.3)
        opt = torch.optim.SGD(comb.parameters(), 0.05)
        for _ in range(1000):
            loss = (comb(maps) - y).pow(2).mean() + l1 * comb.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[l1] = comb.alpha.detach()
    unused = torch.tensor([1, 3, 4])
    assert results[0.1][unused].abs().max() < 0.01
    assert results[0.0][unused].abs().sum() > 2 * results[0.1][unused].abs().sum()
    assert results[0.1][0] > 0.7 and results[0.1][2] > 0.4  # the used ones stay (shrunk a little)
    assert LassoCombination(3).alpha.tolist() == [0.0, 0.0, 1.0]  # it starts as the last unit alone
