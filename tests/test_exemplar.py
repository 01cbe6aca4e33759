"""Exemplar-CNN: seed selection, each transformation family, the three networks' feature counts, set-up errors
and the loss going down."""

from __future__ import annotations

import colorsys
import dataclasses

import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.backbones.exemplar import TABLE_NETWORKS, ExemplarNet, ExemplarNetConfig
from sslbench.data.synthetic import embedded_images
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.exemplar import (
    ExemplarConfig,
    choose_seeds,
    hsv_to_rgb,
    identity_transform,
    rgb_to_hsv,
    transform_patches,
)
from tests.conftest import fit_losses

IDENTITY_PCA = torch.cat([torch.full((1, 3), 0.5), torch.eye(3)])


def test_seeds_sit_where_the_gradient_is() -> None:
    images = torch.full((6, 3, 64, 64), 128, dtype=torch.uint8)
    images[:, :, 40:, 10:30] = 250  # a bright block: its edges are the only gradient
    centres = choose_seeds(images, 16, torch.Generator().manual_seed(0))
    y, x = centres.unbind(1)
    # every window of 16 px around a centre overlaps the block's edges (rows >= 32, columns 2..38)
    assert bool(((y + 8 > 40) & (x + 8 > 10) & (x - 8 < 30)).all()), centres
    flat = torch.full((2, 3, 40, 40), 90, dtype=torch.uint8)  # no gradient at all: any position, still valid
    c = choose_seeds(flat, 16, torch.Generator().manual_seed(1))
    assert bool(((c >= 8) & (c <= 32)).all())


def test_hsv_round_trips_and_matches_colorsys() -> None:
    rgb = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    hsv = rgb_to_hsv(rgb)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb, atol=1e-5, rtol=0)
    for (r, g, b), (h, s, v) in zip(rgb[0].reshape(3, -1).T.tolist(), hsv[0].reshape(3, -1).T.tolist()):
        ref = colorsys.rgb_to_hsv(r, g, b)
        assert abs((h - ref[0] + 0.5) % 1 - 0.5) < 1e-5 and abs(s - ref[1]) < 1e-5 and abs(v - ref[2]) < 1e-5


def _one(images: torch.Tensor, centres: torch.Tensor, cfg: ExemplarConfig, seed: int = 0) -> torch.Tensor:
    return transform_patches(images, centres, cfg, IDENTITY_PCA, torch.Generator().manual_seed(seed))


def test_with_every_family_off_the_seed_patch_is_read_as_it_is() -> None:
    images = embedded_images("unlabeled", 64, 2, 0)
    centres = torch.tensor([[20.0, 30.0], [40.0, 24.0]])
    out = _one(images, centres, identity_transform(16))
    expected = torch.stack([images[0, :, 12:28, 22:38], images[1, :, 32:48, 16:32]]).float() / 255
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("family", ["translate", "scale", "rotate", "pca_power", "sv_power", "sv_factor", "sv_shift",
                                    "hue_shift"])
def test_each_transformation_family_changes_the_patch_and_only_in_its_own_way(family: str) -> None:
    images = embedded_images("unlabeled", 64, 4, 0)
    centres = torch.full((4, 2), 32.0)
    base = identity_transform(16)
    on = {"translate": {"translate": 0.25}, "scale": {"scale_min": 0.7, "scale_max": 1.4}, "rotate": {"rotate": 20.0},
          "pca_power": {"pca_power": 1.0}, "sv_power": {"sv_power": 2.0}, "sv_factor": {"sv_factor": 0.5},
          "sv_shift": {"sv_shift": 0.1}, "hue_shift": {"hue_shift": 0.1}}[family]
    plain, changed = _one(images, centres, base), _one(images, centres, dataclasses.replace(base, **on))
    assert float((changed - plain).abs().mean()) > 1e-3, family
    geometric = family in ("translate", "scale", "rotate")
    if geometric:  # the colours are only moved: the same mean colour, roughly
        assert float((changed.mean((2, 3)) - plain.mean((2, 3))).abs().max()) < 0.2
    else:  # the pixels stay where they are: the gray structure is kept (correlation of luma)
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        a, b = (plain * luma).sum(1).flatten(1), (changed * luma).sum(1).flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
        assert float(corr.abs().min()) > 0.5, (family, corr)
    assert torch.equal(changed, _one(images, centres, dataclasses.replace(base, **on)))  # a pure, seeded function


@pytest.mark.parametrize("name", list(TABLE_NETWORKS))
def test_the_tables_feature_count_comes_from_the_network(name: str) -> None:
    convs, fc = TABLE_NETWORKS[name]
    net = ExemplarNet(ExemplarNetConfig(convs=convs, fc=fc))
    assert net.num_features() == {"64c5-64c5-128f": 256, "64c5-128c5-256c5-512f": 960,
                                  "92c5-256c5-512c5-1024f": 1884}[name]
    assert ExemplarNet.label(net.cfg) == "exemplar-" + name
    out = net(torch.zeros(1, 3, 96, 96), taps=net.default_taps)  # runs on whole images: the fc layer is a conv
    assert out["fc"].shape[1] == fc and out["fc"].shape[-1] > 1


def test_the_released_nets_pool_3x3_after_the_first_two_layers_as_an_option() -> None:
    net = ExemplarNet(ExemplarNetConfig(pool_kernel=3, pooled=2))
    assert [net.feature_info[t].size for t in ("conv1", "conv2", "conv3")] == [16, 8, 8]


def _task(extra: list[str] | None = None):  # noqa: ANN202
    r = load_recipe("pretrain", "exemplar", "mini", ["task.num_classes=8", "data.num_images=8", "backbone.width=0.125",
                                                     "backbone.fc=32", *(extra or [])])
    return TASKS.get("exemplar")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg)), r


def test_set_up_needs_one_image_per_class_and_saves_the_seeds() -> None:
    task, _ = _task()
    images = embedded_images("unlabeled", 64, 8, 0)
    state = task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0))
    assert state["centres"].shape == (8, 2) and state["pca"].shape == (4, 3)
    comps = state["pca"][1:]
    torch.testing.assert_close(comps @ comps.T, torch.eye(3), atol=1e-4, rtol=0)  # orthonormal components
    task.restore(state)
    assert torch.equal(task.centres, state["centres"])
    with pytest.raises(UserError, match="num_images"):
        task.setup(torch.utils.data.TensorDataset(images[:5]), torch.Generator().manual_seed(0))


def test_exemplar_loss_goes_down_and_each_sample_keeps_its_images_class() -> None:
    torch.manual_seed(0)
    task, r = _task(["task.views=4"])
    images = embedded_images("unlabeled", 64, 8, 0)
    task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
    batch = task.make_batch(images, {"index": torch.arange(8)}, torch.Generator().manual_seed(0))
    assert batch["input"].shape == (32, 3, 32, 32) and batch["labels"].tolist() == [i // 4 for i in range(32)]
    opt = torch.optim.Adam(task.parameters(), lr=2e-3)  # the mechanism, not the recipe's schedule
    losses = fit_losses(task, opt, [batch] * 100)
    assert losses[-1] < 0.65 * losses[0], losses  # ln 8 = 2.08 to ~1.2 in 100 steps of a width-0.125 net


def test_the_multiclass_svm_chooses_scikit_learns_c_and_weights() -> None:
    import numpy as np
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import LinearSVC

    from sslbench.svm import fit_multiclass, mean_class_accuracy

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 20, generator=g) * 0.7
    labels = torch.randint(0, 4, (160,), generator=g)
    x = centres[labels] + torch.randn(160, 20, generator=g)
    costs = [1e-3, 1e-2, 1e-1, 1.0]
    fit = fit_multiclass(x, labels, costs, folds=3)
    ref = [cross_val_score(LinearSVC(C=c, dual=True, max_iter=100_000, tol=1e-6), x.numpy(), labels.numpy(),
                           cv=3).mean() for c in costs]
    np.testing.assert_allclose(fit.cv_score.numpy(), ref, atol=1e-9)
    clf = LinearSVC(C=fit.cost, dual=True, max_iter=100_000, tol=1e-6).fit(x.numpy(), labels.numpy())
    np.testing.assert_allclose(fit.coef.numpy(), clf.coef_.T, atol=1e-3)
    assert fit.cost == costs[int(np.argmax(ref))]
    assert (fit.predict(x) == torch.from_numpy(clf.predict(x.numpy()))).float().mean() > 0.99
    scores = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert mean_class_accuracy(scores, torch.tensor([0, 1, 1, 1])) == pytest.approx((1 + 1 / 3) / 2)


def test_the_protocols_training_sets_are_the_benchmarks() -> None:
    from sslbench.protocols.exemplar_svm import ExemplarSvm, stl10_folds

    labels = torch.arange(10).repeat(20)  # 200 training images, 20 per class
    r = load_recipe("protocol", "exemplar-svm", "mini", flavour="cifar10-400")
    proto = ExemplarSvm(dataclasses.replace(r.component.cfg, per_class=5, subsets=3))
    sets = proto._training_sets(labels, r)
    assert len(sets) == 3 and all(len(s) == 50 for s in sets)
    assert all(torch.bincount(labels[s]).tolist() == [5] * 10 for s in sets)
    assert not torch.equal(sets[0], sets[1])  # random subsets, seeded: the same on every call
    assert all(torch.equal(a, b) for a, b in zip(sets, proto._training_sets(labels, r)))
    with pytest.raises(UserError, match="per_class"):
        ExemplarSvm(dataclasses.replace(r.component.cfg, per_class=25))._training_sets(labels, r)
    stl = load_recipe("protocol", "exemplar-svm", "mini", ["data.num_test=100"], flavour="stl10")
    folds = stl10_folds(stl)  # the embedded STL-10's fold_indices.txt: 10 folds of a fifth of train
    assert len(folds) == 10 and all(len(f) == 20 for f in folds) and all(len(set(f.tolist())) == 20 for f in folds)
    with pytest.raises(UserError, match="fold_indices.txt"):
        stl10_folds(load_recipe("protocol", "exemplar-svm", "mini", ["data.root=/nonexistent"], flavour="stl10"))


def test_a_rotation_on_a_non_square_image_is_a_rotation() -> None:
    """On a 40 x 80 image whose red and green channels are the x and y coordinates, every output pixel of a
    rotated window must hold the colour of the point the rotation maps it to."""
    h, w = 40, 80
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    images = torch.stack([xs / w * 255, ys / h * 255, torch.full_like(xs, 128)])[None].round().to(torch.uint8)
    centre = torch.tensor([[20.0, 40.0]])
    cfg = dataclasses.replace(identity_transform(16), rotate=90.0)
    turned = transform_patches(images, centre, cfg, IDENTITY_PCA, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the same draws: translation (2), scale (1), then the angle
    torch.rand(2, generator=g), torch.rand(1, generator=g)
    angle = (torch.rand(1, generator=g) * 2 - 1) * torch.pi / 2
    oy, ox = torch.meshgrid(torch.arange(16) - 7.5, torch.arange(16) - 7.5, indexing="ij")
    sx = 40.0 + torch.cos(angle) * ox - torch.sin(angle) * oy
    sy = 20.0 + torch.sin(angle) * ox + torch.cos(angle) * oy
    torch.testing.assert_close(turned[0, 0] * w, sx, atol=0.5, rtol=0)  # within half a pixel
    torch.testing.assert_close(turned[0, 1] * h, sy, atol=0.5, rtol=0)


def test_caltech_splits_are_disjoint_per_class_and_sized_as_the_protocol_says() -> None:
    from sslbench.protocols.exemplar_svm import caltech_splits

    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([35, 80, 120])])[torch.randperm(235)]
    splits = caltech_splits(labels, 4, 30, 50, seed=0, classes=["a", "b", "c"])
    assert len(splits) == 4
    for train, test in splits:
        assert not set(train.tolist()) & set(test.tolist())
        assert torch.bincount(labels[train]).tolist() == [30, 30, 30]
        assert torch.bincount(labels[test]).tolist() == [5, 50, 50]  # the rest, at most 50
    assert not torch.equal(splits[0][0], splits[1][0])  # random splits, seeded: the same on every call
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(splits, caltech_splits(labels, 4, 30, 50, 0, ["a", "b", "c"])))
    _, rest = caltech_splits(labels, 1, 30, 0, 0, ["a", "b", "c"])[0]
    assert torch.bincount(labels[rest]).tolist() == [5, 50, 90]  # test_per_class 0: all the rest
    with pytest.raises(UserError, match="class 'a' has 35 readable images; the split needs protocol.per_class = 35"):
        caltech_splits(labels, 1, 35, 50, 0, ["a", "b", "c"])


def test_the_spatial_pyramid_is_the_max_over_each_grid_cell() -> None:
    from sslbench.protocols._probing import PoolSpec, pool_features

    x = torch.randn(2, 3, 7, 9)
    got = pool_features(x, PoolSpec("pyramid", levels=(1, 2, 4)))
    assert got.shape == (2, 3 * (1 + 4 + 16))
    ref = []
    for level in (1, 2, 4):  # adaptive pooling's cells: rows floor(i H / l) .. ceil((i + 1) H / l)
        cells = torch.empty(2, 3, level, level)
        for i in range(level):
            for j in range(level):
                r0, r1 = (i * 7) // level, -(-((i + 1) * 7) // level)
                c0, c1 = (j * 9) // level, -(-((j + 1) * 9) // level)
                cells[:, :, i, j] = x[:, :, r0:r1, c0:c1].amax((2, 3))
        ref.append(cells.flatten(1))
    torch.testing.assert_close(got, torch.cat(ref, 1))
    with pytest.raises(UserError, match="needs levels"):
        PoolSpec("pyramid", levels=())


def test_the_caltech_flavours_run_end_to_end_and_refuse_another_data_set(tmp_path) -> None:  # noqa: ANN001
    import json

    from sslbench.protocols.base import evaluate

    small = ["protocol.per_class=3", "protocol.test_per_class=2", "protocol.subsets=2", "data.num_images=120",
             "data.image_size=40", "data.batch_size=40", "backbone.width=0.125"]
    for name in ("caltech101", "caltech256"):
        r = load_recipe("protocol", "exemplar-svm", "mini", small, flavour=name)
        out = evaluate(r, "random", tmp_path / name, "cpu", progress=False, argv=["test"])
        assert set(out.metrics) == {f"exemplar-svm/{name}", f"exemplar-svm/{name}/sd", f"exemplar-svm/{name}/split0",
                                    f"exemplar-svm/{name}/split1", "exemplar-svm/features"}
        svm = json.loads((out.run_dir / "svm.json").read_text())
        assert svm["train_sizes"] == [60, 60] and svm["test_sizes"] == [40, 40]  # 20 classes x (3, 2)
        assert svm["score"] == "mean per-class accuracy"
    wrong = load_recipe("protocol", "exemplar-svm", "mini", ["protocol.benchmark=caltech101"])
    with pytest.raises(UserError, match="benchmark 'caltech101' is measured on caltech101, the recipe reads cifar10"):
        evaluate(wrong, "random", tmp_path / "wrong", "cpu", progress=False, argv=["test"])
    assert not (tmp_path / "wrong").exists()  # refused before any work
