"""Pseudo-label weights of SA-MTL: confidence x local density x distribution (docs/disjoint.md).

Every image of one source is labelled for one task only; the teacher predicts the other task's label for it (the
*pseudo* label ``p_i = argmax_c P_ic``). Each pseudo-labelled sample gets a weight in [0, 1] that is the product of
some of three factors, divided by its maximum (:func:`combine`):

**Confidence** (:func:`confidence`): ``max_c P_ic``, the teacher's probability of the pseudo label.

**Density** (:func:`density`), per pseudo class ``c`` with ``n`` members ``x_1 .. x_n`` (features of the pseudo-labelled
samples, Euclidean distances ``d_ij = ||x_i - x_j||``):

- the cutoff ``d_c`` is the element ``floor(n^2 t)`` (0-based, ``t = density_t``) of the **sorted n x n matrix**
  ``(d_ij)`` -- the class's own distances only, with its ``n`` diagonal zeros and every pair twice. That equals 0
  when ``floor(n^2 t) < n`` and otherwise the element ``floor((floor(n^2 t) - n) / 2)`` of the sorted ``n (n - 1) / 2``
  pair distances, which is how it is computed here (``np.partition``);
- ``rho_i = #{j != i : d_ij < d_c}`` (strictly closer than the cutoff);
- ``density_i = (rho_i - min rho) / (max rho - min rho)`` within the class: the least dense member gets 0, the most
  dense 1. A class whose members all have the same count (a one-member class included, and every class when
  ``d_c = 0``) gets 1 for all its members.

**Distribution** (:func:`distribution`): a Gaussian mixture with ``k = cluster_k`` components (scikit-learn
``GaussianMixture``, full covariances, ``random_state=seed``) is fitted on all labelled-source features (weights
``pi_j``, means ``mu_j``) and another on all pseudo-source features (means ``m_l``); both are global, not per class.
Each pseudo sample belongs to the pseudo component that ``predict`` gives it (the largest responsibility). The
distance of component ``l`` to the labelled data is the earth mover's distance from ``m_l`` as a point mass to the
discrete mixture ``sum_j pi_j delta(mu_j)``; with unit mass every atom must be filled, so the transport problem has
the closed form (:func:`emd_point_to_mixture`)::

    EMD_l = sum_j pi_j ||m_l - mu_j||        (sum_j pi_j = 1)

and the factor is ``(1 / EMD_l) / max(1 / EMD)`` over the samples, i.e. ``min(EMD) / EMD_l`` in (0, 1]; a sample
whose ``EMD`` is 0 gets 1 (and then every sample with ``EMD > 0`` gets 0, the limit of the ratio).

**Differences from the original** (hy-zpg/SA-MTL ``utils/pseudo_density_distribution/density_gmm_distribution.py``:
``data_density_distribution_weight``, called through ``pseudo_label_weights.assign_weights`` by
``Alternative-MTL_scripts/ALTERNATIVE_EP.py`` with ``density_t = 0.6``, ``cluster_k = 4``):

- Density: the original computes float32 distances ``sqrt(|x_i^2 + x_j^2 - 2 x_i.x_j|)``; here the same Gram form in
  float64 with negative round-off clamped to 0, stored as float32 **squared** distances (same order, so the same
  cutoff and counts up to float rounding). It subtracts 1 (the sample itself) from every count, which min-max
  normalisation removes. A class whose counts are all equal divides 0 by 0 there, and its NaNs then become 0 through
  ``np.where(w > 1e-5, w, 0)``; here they are 1 (that ``1e-5`` floor is not kept: it only changes a class whose count
  range exceeds 10^5). Its batching loop (``gen_batches`` of 500,000) keeps only a larger class's last batch (the
  others keep weight -1); here every member is weighted.
- Distribution: the original's mixtures are unseeded. Its EMD is Rubner's, solved with SLSQP (``getEMD``), and its
  source is ``m_l`` with the component's **weight** ``pi'_l < 1`` as mass, not unit mass: the total flow is then
  ``min(pi'_l, 1) = pi'_l`` and the optimum moves that mass to the nearest labelled components first (a partial
  transport, divided by the flow ``pi'_l``). ``source_mass="component"`` computes that optimum exactly (the closed
  form of :func:`emd_point_to_mixture` with ``mass``). An ``EMD`` of 0 gives ``1 / 0 = inf`` and then NaN there.
  The labelled classes and the pseudo labels do not enter its distribution factor; they are only checked here.
- Combination: the original multiplies the chosen factors and divides by the maximum in ``Weight_Strategy``, as
  :func:`combine` does.

Cost: the density of a class of ``n`` members takes two passes of ``O(n^2 D)`` matrix products in row blocks of at
most :data:`_BLOCK_ELEMENTS` distances, plus ``n (n - 1) / 2`` float32 distances for the partition (200 MB for one
class of 10,000). A full-covariance mixture costs ``O(N k D^2)`` per EM iteration (about 0.3 s for N = 10,000,
D = 128, k = 4 on 2 cores): features that form clusters converge in a few iterations, structureless ones can take
most of ``max_iter``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
from sklearn.mixture import GaussianMixture

__all__ = ["FACTORS", "combine", "confidence", "density", "distribution", "emd_point_to_mixture"]

#: the factor names :func:`combine` accepts, in the order of the method
FACTORS: tuple[str, ...] = ("confidence", "density", "distribution")

#: distances computed per row block in :func:`density` (float64 block of at most this many entries, 32 MiB)
_BLOCK_ELEMENTS = 1 << 22


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a finite float64 ``[N, D]`` array, else ValueError naming ``name``."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] < 1 or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a real [N, D] array with D >= 1, got shape {a.shape} of {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or inf")
    return a


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    """``y`` as an integer ``[n]`` array, else ValueError naming ``name``."""
    a = np.asarray(y)
    if a.ndim != 1 or a.shape[0] != n or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer [{n}] array, got shape {a.shape} of {a.dtype}")
    return a


def confidence(probs: np.ndarray) -> np.ndarray:
    """The teacher's probability of each pseudo label.

    Args:
        probs (Array[N, C]): the teacher's class probabilities of each pseudo-labelled sample (finite, C >= 1).

    Returns:
        Array[N], float64: ``max_c probs[i, c]``.
    """
    p = _features(probs, "probs")
    return p.max(axis=1)


def _row_blocks(n: int) -> Iterator[tuple[int, int]]:
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for a in range(0, n, step):
        yield a, min(a + step, n)


def _squared_block(x: np.ndarray, sq: np.ndarray, a: int, b: int, c0: int = 0) -> np.ndarray:
    """Squared distances of rows ``a:b`` to rows ``c0:``, float64 Gram form clamped at 0, as float32 ``[b-a, n-c0]``."""
    d = sq[a:b, None] + sq[None, c0:] - 2.0 * (x[a:b] @ x[c0:].T)
    np.maximum(d, 0.0, out=d)
    return d.astype(np.float32)


def _class_counts(x: np.ndarray, t: float) -> np.ndarray:
    """``rho_i`` of one class (module docstring): members strictly closer than the class's cutoff. ``x``: [n, D]."""
    n = x.shape[0]
    k = int(n * n * t)  # the original's index into the sorted n x n distance matrix
    if k < n:  # the cutoff is one of the n diagonal zeros: nothing is strictly closer
        return np.zeros(n, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    condensed = np.empty(n * (n - 1) // 2, dtype=np.float32)  # pair distances (i < j), row-major like pdist
    pos = 0
    for a, b in _row_blocks(n):
        block = _squared_block(x, sq, a, b, c0=a)  # columns a.. hold every j > i of rows a..b
        upper = np.arange(a, n)[None, :] > np.arange(a, b)[:, None]
        m = block[upper]
        condensed[pos:pos + m.size] = m
        pos += m.size
    r = (k - n) // 2
    condensed.partition(r)
    cutoff = condensed[r]
    del condensed
    counts = np.empty(n, dtype=np.int64)
    for a, b in _row_blocks(n):
        block = _squared_block(x, sq, a, b)
        block[np.arange(b - a), np.arange(a, b)] = np.inf  # not itself
        counts[a:b] = np.count_nonzero(block < cutoff, axis=1)
    return counts


def density(features: np.ndarray, pseudo: np.ndarray, t: float) -> np.ndarray:
    """Local density of each pseudo-labelled sample within its pseudo class, min-max normalised per class.

    Args:
        features (Array[N, D]): the pseudo-labelled samples' features (finite).
        pseudo (Array[N], int): their pseudo labels; classes are the distinct values.
        t: ``density_t`` in (0, 1): the cutoff is the element ``floor(n^2 t)`` of the class's sorted ``n x n``
            distance matrix (module docstring).

    Returns:
        Array[N], float64 in [0, 1]: per class, 0 for its least dense member(s), 1 for its most dense; 1 for every
        member of a class whose counts are all equal (one-member classes included).
    """
    x = _features(features, "features")
    y = _labels(pseudo, x.shape[0], "pseudo")
    t = float(t)
    if not 0.0 < t < 1.0:
        raise ValueError(f"density_t (t) must lie in (0, 1), got {t}")
    out = np.empty(x.shape[0], dtype=np.float64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rho = _class_counts(x[idx], t)
        lo, hi = rho.min(), rho.max()
        out[idx] = 1.0 if hi == lo else (rho - lo) / (hi - lo)
    return out


def emd_point_to_mixture(point: np.ndarray, means: np.ndarray, weights: np.ndarray, *,
                         mass: float | None = None) -> float:
    """Earth mover's distance from a point mass to a discrete mixture ``sum_j w_j delta(mu_j)``, in closed form.

    Rubner's EMD: the cheapest flow ``f_j >= 0`` with ``f_j <= w_j`` and total ``F = min(mass, sum_j w_j)``, ground
    distance ``d_j = ||point - mu_j||`` (Euclidean), divided by ``F``. With the default mass (``sum_j w_j``, unit mass
    for mixture weights) every atom is filled: ``sum_j w_j d_j / sum_j w_j``. A smaller mass fills the nearest atoms
    first (the original's per-component mass, module docstring).

    Args:
        point (Array[D]): the source point.
        means (Array[K, D]): the mixture's atoms.
        weights (Array[K]): their masses (>= 0, positive sum).
        mass: the source's mass (> 0); None = ``sum_j w_j``.

    Returns:
        The EMD (>= 0).
    """
    m = _features(np.asarray(point)[None, :] if np.ndim(point) == 1 else point, "point")
    mu = _features(means, "means")
    w = np.asarray(weights, dtype=np.float64)
    if m.shape[0] != 1 or mu.shape[1] != m.shape[1]:
        raise ValueError(f"point must be a [D] array with D = means.shape[1] = {mu.shape[1]}, got {np.shape(point)}")
    if w.shape != (mu.shape[0],) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {mu.shape[0]} finite non-negative masses with a positive sum")
    d = np.linalg.norm(mu - m, axis=1)
    total = float(w.sum())
    if mass is None:
        return float(w @ d / total)
    if not (np.isfinite(mass) and mass > 0):
        raise ValueError(f"mass must be a positive number, got {mass}")
    flow_total = min(float(mass), total)
    order = np.argsort(d, kind="stable")
    before = np.concatenate(([0.0], np.cumsum(w[order])[:-1]))  # mass already placed on nearer atoms
    f = np.clip(flow_total - before, 0.0, w[order])
    return float(f @ d[order] / f.sum())


def _check_k(k: int, n: int, what: str) -> None:
    if k > n:
        raise ValueError(f"cluster_k ({k}) exceeds the {n} samples of the {what}")


def distribution(labelled_features: np.ndarray, labelled_classes: np.ndarray, pseudo_features: np.ndarray,
                 pseudo: np.ndarray, *, k: int, seed: int,
                 source_mass: Literal["unit", "component"] = "unit", max_iter: int = 100) -> np.ndarray:
    """Closeness of each pseudo sample's mixture component to the labelled source's mixture, in (0, 1].

    Args:
        labelled_features (Array[M, D]): features of the samples labelled for the task (finite).
        labelled_classes (Array[M], int): their labels (checked only; the mixtures are global, like the original's).
        pseudo_features (Array[N, D]): features of the pseudo-labelled samples (the other source).
        pseudo (Array[N], int): their pseudo labels (checked only).
        k: ``cluster_k``, the components of each mixture (1 <= k <= min(M, N)).
        seed: ``random_state`` of both mixtures.
        source_mass: ``unit`` (default): each pseudo component is a unit point mass (closed form
            ``sum_j pi_j ||m_l - mu_j||``); ``component``: its mixture weight, as in the original (partial transport).
        max_iter: EM iterations of each mixture at most (scikit-learn's and the original's 100; module docstring).

    Returns:
        Array[N], float64: ``min(EMD) / EMD_l`` of each sample's component ``l`` (``predict``); max 1.
    """
    lf = _features(labelled_features, "labelled_features")
    _labels(labelled_classes, lf.shape[0], "labelled_classes")
    pf = _features(pseudo_features, "pseudo_features")
    _labels(pseudo, pf.shape[0], "pseudo")
    if pf.shape[1] != lf.shape[1]:
        raise ValueError(f"pseudo_features has D = {pf.shape[1]}, labelled_features D = {lf.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"cluster_k (k) must be an integer >= 1, got {k!r}")
    if source_mass not in ("unit", "component"):
        raise ValueError(f"source_mass must be 'unit' or 'component', got {source_mass!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    k = int(k)
    _check_k(k, lf.shape[0], "labelled features")
    _check_k(k, pf.shape[0], "pseudo features")
    g_l = GaussianMixture(n_components=k, random_state=seed, max_iter=int(max_iter)).fit(lf)
    g_p = GaussianMixture(n_components=k, random_state=seed, max_iter=int(max_iter)).fit(pf)
    comp = g_p.predict(pf)
    used = np.unique(comp)
    emd = np.zeros(k, dtype=np.float64)
    for j in used:
        mass = None if source_mass == "unit" else float(g_p.weights_[j])
        emd[j] = emd_point_to_mixture(g_p.means_[j], g_l.means_, g_l.weights_, mass=mass)
    e = emd[comp]
    e_min = e.min()
    if e_min == 0.0:  # 1/0 dominates: those samples get 1, every other the limit 0
        return (e == 0.0).astype(np.float64)
    return e_min / e


def combine(factors: Mapping[str, np.ndarray], use: Sequence[str]) -> np.ndarray:
    """The product of the chosen factors, divided by its maximum.

    Args:
        factors: name (one of :data:`FACTORS`) -> Array[N] of non-negative finite values; every array of the same
            length ``N`` (at least one array, to know ``N``).
        use: the names to multiply, each at most once; empty = no weighting.

    Returns:
        Array[N], float64 in [0, 1]: ``prod / max(prod)``; all zeros when the maximum is 0; all ones for empty
        ``use``.
    """
    for name in use:
        if name not in FACTORS:
            raise ValueError(f"unknown pseudo-weight factor {name!r} in use (expected some of {', '.join(FACTORS)})")
    if len(set(use)) != len(use):
        raise ValueError(f"use names a factor twice: {list(use)}")
    if not factors:
        raise ValueError("factors is empty: give at least one [N] array")
    arrays = {}
    for name, v in factors.items():
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1 or not np.isfinite(a).all() or (a < 0).any():
            raise ValueError(f"factor {name!r} must be a finite non-negative [N] array")
        arrays[name] = a
    n = {a.shape[0] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"factors differ in length: { {k: a.shape[0] for k, a in arrays.items()} }")
    (n,) = n
    out = np.ones(n, dtype=np.float64)
    for name in use:
        if name not in arrays:
            raise ValueError(f"factor {name!r} is in use but not given in factors")
        out *= arrays[name]
    if not use or n == 0:
        return out
    top = out.max()
    return np.zeros(n, dtype=np.float64) if top == 0 else out / top
