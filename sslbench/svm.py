"""Linear SVMs for many classes, costs and cross-validation folds at once (the VOC07 SVM protocol's solver).

Each problem is scikit-learn's `LinearSVC(loss="squared_hinge", penalty="l2", class_weight=...)`, i.e.
liblinear's L2-regularised L2-loss SVM with its penalised intercept:

    min_w  1/2 ||w||^2 + C * sum_i c_i * max(0, 1 - y_i <w, x_i>)^2,    x_i = [features_i, intercept_scaling]

y_i in {-1, +1}; c_i >= 0 the per-sample cost weight (class_weight of y_i; 0 drops the sample, which is how a
held-out fold or an ignored difficult image leaves a problem without changing the data matrix).

Why not a loop over LinearSVC (the released code fits 20 classes x 26 costs x (3 folds + 1) = 2080 of them):
every one of these problems sees the *same* features. Here they share one eigendecomposition of the Gram matrix:
in the eigenbasis z = U sqrt(Lambda) the data matrix has orthogonal columns (z^T z = Lambda) and at most
min(N, D+1) of them, so the generalised Hessian I + 2C z^T diag(c_i active_i) z is close to diagonal and a
diagonally preconditioned conjugate gradient solves it in a few steps. Every problem then runs primal Newton
(Keerthi & DeCoste 2005) with an exact line search, batched as matrix products over all problems, along the
path of increasing C with warm starts (Chu et al. 2015); the refit on all of trainval runs once per class,
at the chosen C.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sslbench.errors import UserError
from sslbench.metrics import average_precision


@dataclass(frozen=True)
class SvmBasis:
    """The training features in an orthogonal basis, and the map back to feature-space weights."""

    z: Tensor  # [N, r] rows = training samples (intercept included), z^T z = diag(eig), z z^T = the Gram matrix
    eig: Tensor  # [r] squared column norms of z (eigenvalues of the Gram matrix), descending
    vec: Tensor  # [N, r] (Gram side N) or [D+1, r] (covariance side) eigenvectors
    xa: Tensor  # [N, D+1] the training features with the intercept column (float64)
    gram: Tensor  # [N, N] xa xa^T (= z z^T up to the dropped null space), float64
    intercept_scaling: float  # the constant feature appended to every sample (liblinear's bias term)

    def feature_weights(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Basis weights [r, P] -> (coef [D, P], intercept [P]) as LinearSVC reports them."""
        v = v.to(self.vec.dtype)
        if self.vec.shape[0] == self.xa.shape[0]:  # Gram side: x = U sqrt(L) V^T, V = x^T U / sqrt(L)
            w = self.xa.T @ (self.vec @ (v / self.eig.sqrt()[:, None]))
        else:
            w = self.vec @ v
        return w[:-1], w[-1] * self.intercept_scaling

    def decision(self, x: Tensor, v: Tensor) -> Tensor:
        """Decision values [M, P] of features x [M, D] under basis weights v [r, P]."""
        coef, intercept = self.feature_weights(v)
        return x.to(coef.dtype) @ coef + intercept


def svm_basis(x: Tensor, intercept_scaling: float = 1.0) -> SvmBasis:
    """Eigenbasis of the training features x [N, D], from the smaller of the Gram and covariance matrices,
    in float64: z is the data the solver sees, so it must reproduce x x^T to rounding error."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise UserError(f"svm: expected training features [N, D] with N >= 2, found shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise UserError("svm: the training features contain NaN or inf; check the trunk "
                        "(was its checkpoint trained to a finite loss?)")
    xa = torch.cat([x.double(), x.new_full((x.shape[0], 1), intercept_scaling, dtype=torch.float64)], 1)  # [N, D+1]
    n, d1 = xa.shape
    gram = xa @ xa.T
    eig, vec = _eigh_descending(gram if n <= d1 else xa.T @ xa)
    keep = eig > eig[0] * min(n, d1) * torch.finfo(torch.float64).eps  # numerical rank
    eig, vec = eig[keep], vec[:, keep]
    z = vec * eig.sqrt() if n <= d1 else xa @ vec
    return SvmBasis(z, eig, vec, xa, gram, intercept_scaling)


def _eigh_descending(a: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric eigendecomposition, largest first. On the CPU through numpy's LAPACK, which measured about
    twice as fast as torch's on a 3000 x 3000 Gram matrix, with as many threads as torch is allowed."""
    if a.device.type == "cpu":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(torch.get_num_threads(), user_api="blas"):
            eig, vec = (torch.from_numpy(t) for t in np.linalg.eigh(a.numpy()))
    else:
        eig, vec = torch.linalg.eigh(a)
    return eig.flip(0), vec.flip(1)


# An exact Newton step is taken where its Cholesky (n_A^3 / 3 flops) costs at most this many CG iterations
# (4 N r flops each). With 10, C = 10 and 100 took 22 s instead of 70 s with CG alone (3000 conv3 features).
EXACT_STEP_BUDGET = 10


@dataclass(frozen=True)
class Problems:
    """P problems on one basis, in the solver's dtype: what every Newton step of every C shares."""

    z: Tensor  # [N, r] the basis
    z2: Tensor  # [N, r] z * z, for the Hessian diagonal
    gram: Tensor  # [N, N] z z^T in float64, for exact Newton steps on small active sets
    direct_max: int  # largest active set solved exactly (a Cholesky then costs about 10 CG iterations)
    y: Tensor  # [N, P] labels in {-1, 1}
    weight: Tensor  # [N, P] per-sample cost weights (0 = not in this problem)

    @staticmethod
    def build(basis: SvmBasis, y: Tensor, weight: Tensor, dtype: torch.dtype = torch.float32) -> Problems:
        z = basis.z.to(dtype)
        n, r = z.shape
        direct_max = int((3 * EXACT_STEP_BUDGET * 4 * n * r) ** (1 / 3))
        return Problems(z, z * z, basis.gram, direct_max, y.to(z), weight.to(z))

    def columns(self, keep: Tensor) -> Problems:
        """The problems where keep [P] (bool) is true."""
        return Problems(self.z, self.z2, self.gram, self.direct_max, self.y[:, keep], self.weight[:, keep])


def solve_path(
    basis: SvmBasis, y: Tensor, weight: Tensor, costs: Tensor, tol: float = 1e-3, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Basis weights [len(costs), r, P] of P problems (labels y [N, P] in {-1, 1}, cost weights [N, P]) at
    every C of `costs` (ascending), each warm-started from the previous C's solution."""
    pb = Problems.build(basis, y, weight, dtype)
    v = pb.z.new_zeros(pb.z.shape[1], y.shape[1])
    m = pb.z.new_zeros(y.shape)
    out = []
    for c in costs.tolist():
        v, m = newton(pb, v.new_full((v.shape[1],), c), v, m, tol)
        out.append(v)
    return torch.stack(out)


def newton(
    pb: Problems, cost: Tensor, v: Tensor, m: Tensor | None = None, tol: float = 1e-3, max_newton: int = 50,
    max_cg: int = 200,
) -> tuple[Tensor, Tensor]:
    """Primal Newton for every problem at once from basis weights v [r, P] (margins m = z v [N, P] if known),
    at costs [P]; a problem stops when its gradient norm falls to `tol` times the norm of its weights.
    Returns the weights and their margins.

    Why relative to ||w|| rather than to the gradient at w = 0 (liblinear's primal test): that gradient grows
    with C while w saturates (towards the hard-margin solution), so along a warm-started C path the
    liblinear-style test passes at a large C before any step is taken. At the optimum w = 2C z^T(...) exactly,
    so ||g|| / ||w|| is the relative mismatch of the two terms, whatever C."""
    v = v.clone()
    m = pb.z @ v if m is None else m.clone()
    todo = torch.ones(v.shape[1], dtype=torch.bool, device=v.device)  # boolean masks: cheaper than index lists
    for _ in range(max_newton):
        sub, c, vt, mt = pb.columns(todo), cost[todo], v[:, todo], m[:, todo]
        act = sub.weight * (sub.y * mt < 1)  # cost weight of the samples inside the margin (the only ones with loss)
        g = vt - 2 * c * (pb.z.T @ (act * (sub.y - mt)))  # [r, p]
        gnorm, vnorm = g.norm(dim=0), vt.norm(dim=0)
        left = gnorm > tol * vnorm
        if not left.any():
            break
        todo[todo.clone()] = left
        sub, c, vt, mt, act, g = sub.columns(left), c[left], vt[:, left], mt[:, left], act[:, left], g[:, left]
        forcing = torch.clamp((gnorm[left] / vnorm[left]).sqrt(), max=0.1)  # inexact Newton: looser far away
        d, q = _newton_direction(pb, 2 * c * act, g, forcing, max_cg)
        t = _line_search(vt, d, mt, q, sub.y, sub.weight, c)
        v[:, todo] = vt + t * d
        m[:, todo] = mt + t * q
    return v, m


def _newton_direction(pb: Problems, scale: Tensor, g: Tensor, forcing: Tensor, max_cg: int) -> tuple[Tensor, Tensor]:
    """d = -H^-1 g with H = I + z^T diag(scale[:, p]) z for every column, and z d.

    Large C leaves few samples inside the margin but makes H ill-conditioned, where conjugate gradients crawl;
    there, with n_A active samples, Woodbury gives H^-1 = I - z_A^T (diag(1/scale_A) + z_A z_A^T)^-1 z_A: one
    n_A x n_A Cholesky on the precomputed Gram matrix. Columns with larger active sets (small C: all active,
    H near diagonal in the eigenbasis) take preconditioned CG."""
    active = (scale > 0).sum(0)
    exact = (active > 0) & (active <= pb.direct_max)
    d, q = torch.empty_like(g), g.new_empty(pb.z.shape[0], g.shape[1])
    if (~exact).any():
        s = scale[:, ~exact]
        d[:, ~exact], q[:, ~exact] = _pcg(pb.z, s, 1 + pb.z2.T @ s, -g[:, ~exact], forcing[~exact], max_cg)
    for j in torch.nonzero(exact).flatten().tolist():
        act = torch.nonzero(scale[:, j] > 0).flatten()
        za = pb.z[act]  # [n_A, r]
        kernel = pb.gram[act][:, act] + torch.diag(1 / scale[act, j].double())  # [n_A, n_A]
        u = torch.cholesky_solve((za @ g[:, j]).double()[:, None], torch.linalg.cholesky(kernel))
        d[:, j] = -g[:, j] + za.T @ u[:, 0].to(za)
    if exact.any():
        q[:, exact] = pb.z @ d[:, exact]
    return d, q


def _pcg(z: Tensor, scale: Tensor, diag: Tensor, b: Tensor, rtol: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Solve (I + z^T diag(scale[:, p]) z) x = b[:, p] for every column p by Jacobi-preconditioned conjugate
    gradients; returns x and z x (the margin change, accumulated from products CG needs anyway).

    Each column is solved for b / ||b||: at C = 1e-7 the raw residuals are so small that their products
    underflow into float32 denormals, which the CPU handles about 3x slower (measured on the mini recipe)."""
    norm = b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)
    x, zx = torch.zeros_like(b), b.new_zeros(z.shape[0], b.shape[1])
    r = b / norm
    s = r / diag
    p = s.clone()
    rs = (r * s).sum(0)
    for _ in range(max_iter):
        zp = z @ p
        hp = p + z.T @ (scale * zp)
        php = (p * hp).sum(0)
        alpha = torch.where(php > 0, rs / php, torch.zeros_like(php))
        x += alpha * p
        zx += alpha * zp
        r -= alpha * hp
        live = r.norm(dim=0) > rtol
        if not live.any():
            break
        s = r / diag
        rs_new = (r * s).sum(0)
        beta = torch.where(rs > 0, rs_new / rs, torch.zeros_like(rs))
        p = (s + beta * p) * live  # a converged column stops moving
        rs = rs_new
    return x * norm, zx * norm


def _line_search(v: Tensor, d: Tensor, m: Tensor, q: Tensor, y: Tensor, weight: Tensor, cost: Tensor) -> Tensor:
    """argmin_t of the objective along v + t d: it is convex and piecewise quadratic in t, so safeguarded 1-D
    Newton from the full step t = 1 finds it in a few steps; the margins move as m + t q."""
    vd, dd = (v * d).sum(0), (d * d).sum(0)
    lo, hi = torch.zeros_like(vd), torch.full_like(vd, float("inf"))
    t = torch.ones_like(vd)
    for _ in range(12):
        mt = m + t * q
        act = weight * (y * mt < 1)
        slope = vd + t * dd - 2 * cost * (act * q * (y - mt)).sum(0)
        curve = dd + 2 * cost * (act * q * q).sum(0)
        lo, hi = torch.where(slope < 0, t, lo), torch.where(slope > 0, t, hi)
        step = t - slope / curve
        bracketed = torch.where(torch.isinf(hi), 2 * t, (lo + hi) / 2)
        t = torch.where(slope == 0, t, torch.where((step >= lo) & (step <= hi), step, bracketed))
    return t


@dataclass(frozen=True)
class OneVsRest:
    """Linear SVMs of K classes, each at the C its cross-validation chose."""

    coef: Tensor  # [D, K] feature-space weights
    intercept: Tensor  # [K]
    cost: Tensor  # [K] the chosen C of each class
    cv_ap: Tensor  # [K, len(costs)] mean held-out AP of each class at each C (costs in the order given)

    def decision(self, x: Tensor) -> Tensor:
        """Scores [M, K] of features x [M, D]."""
        return x.to(self.coef) @ self.coef + self.intercept


def fit_one_vs_rest(
    x: Tensor, positive: Tensor, ignore: Tensor, costs: Sequence[float], folds: int = 3, positive_weight: float = 2.0,
    intercept_scaling: float = 1.0, tol: float = 1e-3, dtype: torch.dtype = torch.float32,
) -> OneVsRest:
    """One-vs-rest SVMs on features x [N, D] for labels positive [N, K] (bool), samples ignored per class where
    ignore [N, K]; C per class = the best mean held-out AP of `folds`-fold stratified cross-validation
    (scikit-learn's `cross_val_score(LinearSVC(...), cv=folds, scoring="average_precision")` folds and score,
    ties going to the first C in `costs`); then refit on every non-ignored sample at that C."""
    cost_list = _check(x, positive, ignore, costs, folds)
    with _small_on_one_thread(x):
        return _fit_one_vs_rest(x, positive.bool().to(x.device), ignore.bool().to(x.device), cost_list, folds,
                                positive_weight, intercept_scaling, tol, dtype)


def _fit_one_vs_rest(
    x: Tensor, positive: Tensor, ignore: Tensor, cost_list: list[float], folds: int, positive_weight: float,
    intercept_scaling: float, tol: float, dtype: torch.dtype,
) -> OneVsRest:
    n, k = positive.shape
    basis = svm_basis(x, intercept_scaling)
    y = torch.where(positive, 1.0, -1.0).double()  # [N, K]
    weight = torch.where(positive, positive_weight, 1.0).double() * ~ignore  # [N, K]
    fold = fold_ids(positive, ignore, folds)  # [N, K], -1 = ignored
    held = torch.stack([fold == f for f in range(folds)], 2).reshape(n, k * folds)  # [N, K*F] column (class, fold)
    cv_y = y.repeat_interleave(folds, 1)
    ascending = sorted(range(len(cost_list)), key=cost_list.__getitem__)
    path = solve_path(basis, cv_y, weight.repeat_interleave(folds, 1) * ~held,
                      torch.tensor([cost_list[i] for i in ascending], dtype=torch.float64), tol, dtype=dtype)
    z = basis.z.to(dtype)
    fold_ap = torch.stack([average_precision(z @ v, cv_y > 0, held) for v in path])  # [C, K*F]
    cv_ap = torch.full((k, len(cost_list)), float("nan"), dtype=torch.float64)
    cv_ap[:, ascending] = fold_ap.reshape(len(cost_list), k, folds).nanmean(2).T.cpu()
    best = torch.from_numpy(np.argmax(np.nan_to_num(cv_ap.numpy(), nan=-1.0), axis=1))  # [K], first max
    chosen = torch.tensor(cost_list, dtype=torch.float64)[best]
    on_path = {i: j for j, i in enumerate(ascending)}  # cost index -> its solutions in `path`
    # Refit from the mean of the class's fold solutions at its C: close to the answer, so a few Newton steps.
    v0 = torch.stack([path[on_path[int(b)], :, c * folds:(c + 1) * folds].mean(1) for c, b in enumerate(best)], 1)
    v, _ = newton(Problems.build(basis, y, weight, dtype), chosen.to(z), v0, tol=tol)
    coef, intercept = basis.feature_weights(v)
    return OneVsRest(coef, intercept, chosen, cv_ap)


@dataclass(frozen=True)
class MultiClass:
    """One-vs-rest linear SVMs of K classes at one shared C, predicting the class of the largest score."""

    coef: Tensor  # [D, K]
    intercept: Tensor  # [K]
    cost: float  # the C the cross-validation chose
    cv_score: Tensor  # [len(costs)] mean held-out score at each C (costs in the order given)

    def decision(self, x: Tensor) -> Tensor:
        return x.to(self.coef) @ self.coef + self.intercept

    def predict(self, x: Tensor) -> Tensor:
        return self.decision(x).argmax(1)


Score = Callable[[Tensor, Tensor], float]  # (scores [M, K], labels [M]) -> a number to maximise


def accuracy_score(scores: Tensor, labels: Tensor) -> float:
    """Share of samples whose largest score is their class's."""
    return float((scores.argmax(1) == labels).double().mean())


def mean_class_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Accuracy of each class's samples, averaged over the classes present (Caltech's protocol)."""
    hit = (scores.argmax(1) == labels).double()
    present = labels.unique()
    return float(torch.stack([hit[labels == c].mean() for c in present]).mean())


def fit_multiclass(
    x: Tensor, labels: Tensor, costs: Sequence[float], folds: int = 3, score: Score = accuracy_score,
    intercept_scaling: float = 1.0, tol: float = 1e-3, dtype: torch.dtype = torch.float32,
) -> MultiClass:
    """scikit-learn's `LinearSVC(C)` (one-vs-rest, squared hinge) on features x [N, D] and labels [N] in 0..K-1,
    with C chosen from `costs` by `score` (default: accuracy of the argmax) averaged over `folds`-fold stratified
    cross-validation on the multi-class labels (StratifiedKFold, no shuffle; ties to the first C), then refit on
    every sample at that C. The K x folds x costs problems share one basis and one warm-started C path, as
    `fit_one_vs_rest`'s do; only the score that picks C differs."""
    from sklearn.model_selection import StratifiedKFold

    labels = labels.long()
    k = int(labels.max()) + 1
    positive = torch.nn.functional.one_hot(labels, k).bool()
    cost_list = _check(x, positive, torch.zeros_like(positive), costs, 2)
    counts = torch.bincount(labels, minlength=k)
    if folds < 2 or int(counts.min()) < folds:
        raise UserError(f"svm: {folds}-fold stratified cross-validation needs at least {folds} samples of every "
                        f"class; the smallest class has {int(counts.min())}; use more images or fewer folds")
    with _small_on_one_thread(x):
        fold = torch.full((len(labels),), -1, dtype=torch.long)
        for f, (_, test) in enumerate(StratifiedKFold(folds).split(np.zeros(len(labels)), labels.cpu().numpy())):
            fold[torch.from_numpy(test)] = f
        fold = fold.to(x.device)
        basis = svm_basis(x, intercept_scaling)
        y = torch.where(positive.to(x.device), 1.0, -1.0).double()  # [N, K]
        held = torch.stack([fold == f for f in range(folds)], 1)  # [N, F]
        cv_y = y.repeat(1, folds)  # [N, F*K]: columns (fold, class)
        cv_w = (~held).double().repeat_interleave(k, 1)
        ascending = sorted(range(len(cost_list)), key=cost_list.__getitem__)
        path = solve_path(basis, cv_y, cv_w, torch.tensor([cost_list[i] for i in ascending], dtype=torch.float64),
                          tol, dtype=dtype)
        z = basis.z.to(dtype)
        cv = torch.full((len(cost_list),), float("nan"), dtype=torch.float64)
        for j, v in zip(ascending, path):
            margins = (z @ v).view(len(labels), folds, k)
            cv[j] = float(np.mean([score(margins[held[:, f], f], labels.to(x.device)[held[:, f]])
                                   for f in range(folds)]))
        best = int(np.argmax(cv.numpy()))
        v0 = path[ascending.index(best)].view(-1, folds, k).mean(1)
        v, _ = newton(Problems.build(basis, y, torch.ones_like(y), dtype), torch.full((k,), cost_list[best]).to(z),
                      v0, tol=tol)
        coef, intercept = basis.feature_weights(v)
    return MultiClass(coef, intercept, cost_list[best], cv)


def fold_ids(positive: Tensor, ignore: Tensor, folds: int) -> Tensor:
    """[N, K] held-out fold of each sample for each class, -1 where ignored: scikit-learn's StratifiedKFold
    (no shuffle) on the class's non-ignored samples, the split `cross_val_score(cv=folds)` makes."""
    from sklearn.model_selection import StratifiedKFold

    out = torch.full(positive.shape, -1, dtype=torch.long)
    pos, ign = positive.cpu().numpy(), ignore.cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer positives than folds: those folds score NaN
        for c in range(pos.shape[1]):
            idx = np.flatnonzero(~ign[:, c])
            for f, (_, test) in enumerate(StratifiedKFold(folds).split(idx, pos[idx, c])):
                out[idx[test], c] = f
    return out.to(positive.device)


def _check(x: Tensor, positive: Tensor, ignore: Tensor, costs: Sequence[float], folds: int) -> list[float]:
    if positive.dim() != 2 or positive.shape[0] != x.shape[0] or ignore.shape != positive.shape:
        raise UserError(f"svm: expected labels and ignore masks [N, K] for {x.shape[0]} feature rows, found "
                        f"{tuple(positive.shape)} and {tuple(ignore.shape)}")
    cost_list = [float(c) for c in costs]
    if not cost_list or min(cost_list) <= 0:
        raise UserError(f"svm: expected a non-empty list of positive costs C, found {cost_list}")
    kept = ~ignore.bool()
    larger_side = torch.maximum((positive.bool() & kept).sum(0), (~positive.bool() & kept).sum(0))  # [K]
    if folds < 2 or int(larger_side.min()) < folds:
        raise UserError(f"svm: {folds}-fold stratified cross-validation needs folds >= 2 and, per class, at least "
                        f"{folds} positive or {folds} negative samples; found {int(larger_side.min())}; "
                        "use more images or fewer folds")
    return cost_list


@contextmanager
def _small_on_one_thread(x: Tensor, limit: int = 2_000_000) -> Iterator[None]:
    """Run a small CPU problem (N x min(N, D) below `limit`) on one thread. Its products are too small to gain
    from a second thread, and each op's fork/join then only costs: on a shared 2-core machine the mini recipe
    measured 264 s on 2 threads against 30 s on one."""
    threads = torch.get_num_threads()
    small = x.device.type == "cpu" and x.shape[0] * min(x.shape[0], x.shape[1] + 1) < limit
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(threads)
