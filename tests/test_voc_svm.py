"""The batched SVM solver against scikit-learn's LinearSVC (same objective: squared hinge, L2 penalty,
class_weight, penalised intercept), its cross-validated C choice against the plain per-class, per-C
cross_val_score loop, and the voc07-svm protocol end to end at tiny size."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from sslbench import svm
from sslbench.errors import UserError
from sslbench.svm import fit_one_vs_rest, solve_path, svm_basis

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny products run fastest on one thread (and a shared CI core makes a second one very slow)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_svc(c: float, positive_weight: float = 2.0):  # noqa: ANN201 - sklearn estimator
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, class_weight={1: positive_weight, -1: 1}, loss="squared_hinge", penalty="l2", dual=True,
                     intercept_scaling=1.0, tol=1e-8, max_iter=1_000_000)


def planted(seed: int, n: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative L2-normalised features (like pooled ReLU maps) with a weak class signal planted in them."""
    g = torch.Generator().manual_seed(seed)
    positive = torch.rand(n, k, generator=g) < 0.3
    x = torch.rand(n, d, generator=g, dtype=F64) + 0.5 * positive.double() @ torch.rand(k, d, generator=g, dtype=F64)
    return x / x.norm(dim=1, keepdim=True), positive


@pytest.mark.parametrize("budget", [0, 10**9])  # Newton directions by CG only, by Cholesky only
@pytest.mark.parametrize(("n", "d"), [(60, 20), (40, 90)])  # both sides of the basis: covariance and Gram
def test_solver_matches_linear_svc(n: int, d: int, budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svm, "EXACT_STEP_BUDGET", budget)
    x, positive = planted(0, n, d, 3)
    y = torch.where(positive, 1.0, -1.0).double()
    weight = torch.where(positive, 2.0, 1.0).double()
    weight[:5, 0] = 0.0  # dropped samples: must equal fitting without them
    costs = torch.tensor([0.01, 1.0, 10.0], dtype=F64)
    basis = svm_basis(x)
    path = solve_path(basis, y, weight, costs, tol=1e-9, dtype=F64)
    for i, c in enumerate(costs.tolist()):
        coef, intercept = basis.feature_weights(path[i])
        for p in range(3):
            keep = (weight[:, p] > 0).numpy()
            ref = linear_svc(c).fit(x.numpy()[keep], y[keep, p].numpy())
            np.testing.assert_allclose(basis.decision(x, path[i])[:, p].numpy(), ref.decision_function(x.numpy()), atol=1e-6)
            np.testing.assert_allclose(coef[:, p].numpy(), ref.coef_[0], atol=1e-5)
            assert float(intercept[p]) == pytest.approx(float(ref.intercept_[0]), abs=1e-5)


def test_float32_solver_stays_close_to_linear_svc() -> None:
    x, positive = planted(1, 50, 30, 2)
    y = torch.where(positive, 1.0, -1.0).double()
    basis = svm_basis(x)
    path = solve_path(basis, y, torch.where(positive, 2.0, 1.0).double(), torch.tensor([0.1, 10.0], dtype=F64))
    for i, c in enumerate((0.1, 10.0)):
        ref = linear_svc(c).fit(x.numpy(), y[:, 1].numpy()).decision_function(x.numpy())
        np.testing.assert_allclose(basis.decision(x, path[i])[:, 1].numpy(), ref, atol=5e-3 * np.abs(ref).max())


def reference_one_vs_rest(x: np.ndarray, positive: np.ndarray, ignore: np.ndarray, costs: list[float], x_test: np.ndarray):
    """Goyal et al.'s loop (VISSL's svm_trainer): per class drop ignored images, per C 3-fold cross_val_score
    scored by AP; refit the best C (first max in list order) on all kept images."""
    from sklearn.model_selection import cross_val_score

    chosen, cv, scores = [], [], []
    for k in range(positive.shape[1]):
        keep = ~ignore[:, k]
        xk, yk = x[keep], np.where(positive[keep, k], 1, -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cv.append([cross_val_score(linear_svc(c), xk, yk, cv=3, scoring="average_precision").mean() for c in costs])
        best = costs[int(np.argmax(cv[-1]))]
        chosen.append(best)
        scores.append(linear_svc(best).fit(xk, yk).decision_function(x_test))
    return np.array(chosen), np.array(cv), np.stack(scores, 1)


def test_cross_validated_choice_matches_the_scikit_learn_loop() -> None:
    x, positive = planted(2, 90, 25, 3)
    ignore = torch.zeros_like(positive)
    ignore[::7, 1] = True  # images a class holds only as difficult objects: out of that class's folds
    ignore &= ~positive
    x_test, _ = planted(3, 30, 25, 3)
    costs = [1.0, 0.01, 100.0, 0.1]  # unsorted on purpose: ties go to the first listed
    fit = fit_one_vs_rest(x, positive, ignore, costs, tol=1e-9, dtype=F64)
    chosen, cv, scores = reference_one_vs_rest(x.numpy(), positive.numpy(), ignore.numpy(), costs, x_test.numpy())
    np.testing.assert_allclose(fit.cv_ap.numpy(), cv, atol=1e-6)
    np.testing.assert_array_equal(fit.cost.numpy(), chosen)
    np.testing.assert_allclose(fit.decision(x_test).numpy(), scores, atol=1e-5)


def test_solver_refuses_bad_input() -> None:
    x, positive = planted(4, 20, 5, 2)
    ignore = torch.zeros_like(positive)
    with pytest.raises(UserError, match="NaN or inf"):
        svm_basis(torch.full((4, 3), float("nan")))
    with pytest.raises(UserError, match=r"\[N, D\]"):
        svm_basis(torch.zeros(5))
    with pytest.raises(UserError, match=r"labels and ignore masks \[N, K\]"):
        fit_one_vs_rest(x, positive[:10], ignore[:10], [1.0])
    with pytest.raises(UserError, match="positive costs"):
        fit_one_vs_rest(x, positive, ignore, [0.0, 1.0])
    with pytest.raises(UserError, match="folds >= 2"):
        fit_one_vs_rest(x, positive, ignore, [1.0], folds=1)


# ---------------------------------------------------------------- the protocol


def test_voc07_svm_protocol_end_to_end_on_random_init(tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_alexnet, tiny_protocol

    recipe = tiny_protocol("voc07-svm", tiny_alexnet(['protocol.taps=["conv1", "conv5"]', "data.num_images=80",
                                                      "data.num_test=40"]))
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False, argv=["test"])
    assert {"voc07-svm/conv1/mAP", "voc07-svm/conv5/mAP"} <= set(out.metrics)
    assert all(k.startswith("voc07-svm/conv") for k in out.metrics if k != "voc07-svm/best/mAP")
    assert out.metrics["voc07-svm/best/mAP"] == max(out.metrics["voc07-svm/conv1/mAP"], out.metrics["voc07-svm/conv5/mAP"])
    assert all(0.0 <= v <= 100.0 for v in out.metrics.values())
    per_class = [v for k, v in out.metrics.items() if k.startswith("voc07-svm/conv5/AP/")]
    assert per_class and out.metrics["voc07-svm/conv5/mAP"] == pytest.approx(np.mean(per_class))
    detail = json.loads((out.run_dir / "svm-conv5.json").read_text())
    assert len(detail["chosen_cost"]) == len(detail["classes"]) and all(c in detail["costs"] for c in detail["chosen_cost"])


def test_the_best_tap_is_the_highest_test_map_and_the_first_of_equals() -> None:
    from sslbench.protocols.voc_svm import best_tap

    taps = ("conv1", "conv2", "conv3")
    assert best_tap({"voc07-svm/conv1/mAP": 20.0, "voc07-svm/conv2/mAP": 31.5, "voc07-svm/conv3/mAP": 30.0}, taps) \
        == "conv2"
    assert best_tap({"voc07-svm/conv1/mAP": 25.0, "voc07-svm/conv2/mAP": 25.0, "voc07-svm/conv3/mAP": 1.0}, taps) \
        == "conv1"


def test_voc07_svm_recipes_load_and_refuse_bad_options() -> None:
    from sslbench.protocols.voc_svm import GOYAL_COSTS
    from sslbench.recipes import load_recipe

    paper = load_recipe("protocol", "voc07-svm", "paper")
    assert paper.component.cfg.costs == GOYAL_COSTS and paper.component.cfg.folds == 3
    assert paper.component.cfg.positive_weight == 2.0 and paper.data.dataset == "voc2007"
    with pytest.raises(UserError, match="train_difficult"):
        load_recipe("protocol", "voc07-svm", "mini", ["train_difficult=drop"])


def test_voc07_svm_refuses_an_empty_tap_list(tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_alexnet, tiny_protocol

    with pytest.raises(UserError, match="no taps"):
        evaluate(tiny_protocol("voc07-svm", tiny_alexnet(["protocol.taps=[]"])), "random", tmp_path, "cpu", progress=False)


def test_voc07_svm_refuses_a_split_without_any_trainable_class() -> None:
    from sslbench.protocols.voc_svm import trainable_classes

    positive = torch.zeros(6, 20, dtype=torch.bool)
    with pytest.raises(UserError, match="raise data.num_images"):
        trainable_classes(positive, torch.zeros_like(positive), "trainval")
    positive[:3, 4] = True
    assert trainable_classes(positive, torch.zeros_like(positive), "trainval").tolist() == [4]
