"""Batch correction of the JUMP Cell Painting profiling recipe: sphering and Harmony.

:func:`sphere` whitens profiles with a ZCA transform fitted on negative controls (Kessy et al.
2018). :func:`harmony` corrects batch effects on the principal components of the profiles with
Harmony (Korsunsky et al. 2019, Nat Methods 16:1289), implemented here in numpy
(:func:`harmony_embedding`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.profiling.columns import (
    as_float64,
    metadata_columns,
    require_columns,
    resolve_features,
)
from hcsflow.profiling.normalize import _control_mask


def sphere(
    profiles: pd.DataFrame,
    control: Mapping[str, Any] | None = None,
    method: str = "ZCA",
    epsilon: float = 1e-6,
    features: Sequence[str] | None = None,
    shrinkage: float = 0.0,
) -> pd.DataFrame:
    """Whiten features with a sphering transform fitted on control rows.

    With ``C`` the covariance of the control rows (``method="ZCA"``) or their correlation
    matrix after standardizing with the controls' mean and standard deviation
    (``"ZCA-cor"``), shrunk towards a multiple of the identity,
    ``S = (1 - shrinkage) C + shrinkage (tr(C) / p) I = V diag(l) V^T``, every row is mapped
    to ``(x - mean) V diag((l + epsilon) ** -1/2) V^T`` (Kessy et al. 2018; shrinkage as
    Ledoit and Wolf 2004). Without shrinkage, eigenvalues beyond the rank of the controls
    (fewer control rows than features) are replaced by the smallest eigenvalue within the
    rank, so that no direction unseen in the controls is amplified without bound. With a few
    dozen control wells and hundreds of features the small eigenvalues of ``C`` are
    underestimated, and whitening them amplifies directions in which the controls happen to
    vary little; shrinkage bounds that amplification at ``1 / shrinkage`` of the mean
    variance. Features must have no missing values.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
    control : mapping of column to value, optional
        Rows used to fit, e.g. ``{"Metadata_Role": "negcon"}``; None fits on all rows.
    method : {"ZCA", "ZCA-cor"}
    epsilon : float
        Added to the eigenvalues.
    features : sequence of str, optional
    shrinkage : float
        Weight in [0, 1] of the scaled identity in the covariance (0: none; 1: no whitening,
        only centring and scaling).

    Returns
    -------
    DataFrame of the same shape, features whitened (float64).
    """
    if method not in ("ZCA", "ZCA-cor"):
        raise ValueError(f"sphering method must be 'ZCA' or 'ZCA-cor', got {method!r}")
    if epsilon < 0:
        raise ValueError(f"sphering epsilon must be >= 0, got {epsilon}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"sphering shrinkage must be in [0, 1], got {shrinkage}")
    feats = resolve_features(profiles, features, "sphere")
    x = as_float64(profiles, feats)
    nan_cols = [f for f, bad in zip(feats, np.isnan(x).any(axis=0), strict=True) if bad]
    if nan_cols:
        raise ValueError(
            f"sphere: features with missing values {nan_cols[:5]}; run feature selection "
            "with the 'na' operation (and impute) first"
        )
    ctrl = _control_mask(profiles, control)
    fit = x[ctrl]
    if fit.shape[0] < 2:
        raise ValueError(f"sphere: need at least 2 control rows {dict(control or {})}")
    mean = fit.mean(axis=0)
    scale = np.ones(len(feats))
    if method == "ZCA-cor":
        scale = fit.std(axis=0)
        zero = [f for f, s in zip(feats, scale, strict=True) if s == 0]
        if zero:
            raise ValueError(f"sphere: features constant among the controls: {zero[:5]}")
    z = (fit - mean) / scale
    cov = z.T @ z / (z.shape[0] - 1)
    if shrinkage > 0:
        cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / cov.shape[0]) * np.eye(
            cov.shape[0]
        )
    evals, evecs = np.linalg.eigh(cov)
    evals = evals[::-1]
    evecs = evecs[:, ::-1]
    tol = evals[0] * max(cov.shape) * np.finfo(np.float64).eps if evals[0] > 0 else 0.0
    rank = int((evals > tol).sum())
    if rank == 0:
        raise ValueError("sphere: the control rows have zero covariance")
    evals = np.where(np.arange(evals.size) < rank, evals, evals[rank - 1])
    # fix eigenvector signs so that the result does not depend on the LAPACK build
    signs = np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(evecs.shape[1])])
    evecs = evecs * np.where(signs == 0, 1.0, signs)
    w = (evecs / np.sqrt(evals + epsilon)) @ evecs.T
    out = profiles.copy()
    out[feats] = pd.DataFrame(((x - mean) / scale) @ w, columns=feats, index=out.index)
    return out


def _pca(x: np.ndarray, n_components: int) -> np.ndarray:
    """Principal-component scores of ``x`` (n, p) -> (n, n_components), deterministic signs."""
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(n_components, s.size)
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    signs = np.where(signs == 0, 1.0, signs)
    return u[:, :k] * s[:k] * signs


def _l2_rows(a: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norm > 0, norm, 1.0)


def _kmeans_cosine(z: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 25) -> np.ndarray:
    """Spherical k-means (k-means++ seeding) on unit rows; returns unit centroids (k, d)."""
    n = z.shape[0]
    centers = np.empty((k, z.shape[1]))
    centers[0] = z[rng.integers(n)]
    d2 = np.sum((z - centers[0]) ** 2, axis=1)
    for i in range(1, k):
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers[i] = z[idx]
        d2 = np.minimum(d2, np.sum((z - centers[i]) ** 2, axis=1))
    for _ in range(n_iter):
        assign = np.argmax(z @ centers.T, axis=1)
        new = np.zeros_like(centers)
        np.add.at(new, assign, z)
        empty = np.bincount(assign, minlength=k) == 0
        new[empty] = centers[empty]
        new = _l2_rows(new)
        if np.allclose(new, centers):
            centers = new
            break
        centers = new
    return centers


def harmony_embedding(
    z: np.ndarray,
    batches: np.ndarray,
    theta: float = 2.0,
    sigma: float = 0.1,
    lamb: float = 1.0,
    n_clusters: int | None = None,
    max_iter: int = 10,
    max_iter_cluster: int = 20,
    tol_harmony: float = 1e-4,
    tol_cluster: float = 1e-5,
    block_size: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Harmony integration of an embedding (Korsunsky et al. 2019, Nat Methods 16:1289).

    Alternates (1) soft k-means clustering of the cosine-normalized embedding with a penalty
    that favours clusters mixing the batches in their overall proportions, and (2) a
    mixture-of-experts ridge regression per cluster that removes each batch's offset from the
    cells (rows) in proportion to their membership of that cluster.

    Parameters
    ----------
    z : ndarray of shape (n, d)
        Embedding (typically principal components).
    batches : ndarray of shape (n,)
        Batch label of each row.
    theta : float
        Diversity penalty (0 = plain soft k-means, no correction pressure).
    sigma : float
        Width of the soft clustering (entropy weight).
    lamb : float
        Ridge penalty on the batch coefficients.
    n_clusters : int, optional
        Number of clusters; default ``min(100, max(2, round(n / 30)))``.
    max_iter, max_iter_cluster : int
        Outer rounds and clustering iterations per round.
    tol_harmony, tol_cluster : float
        Relative objective change that stops the outer loop and the clustering loop.
    block_size : float
        Fraction of rows whose memberships are updated together.
    seed : int
        Seed of the k-means initialisation and of the block order.

    Returns
    -------
    ndarray of shape (n, d): the corrected embedding.
    """
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    labels, batch_idx = np.unique(np.asarray(batches), return_inverse=True)
    n_b = labels.size
    if n_b < 2:
        return z.copy()
    k = n_clusters if n_clusters is not None else int(min(100, max(2, round(n / 30))))
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    phi = np.zeros((n, n_b))
    phi[np.arange(n), batch_idx] = 1.0
    state = _HarmonyClusters.start(z, phi, batch_idx, k, rng, theta, sigma)
    prev_harmony = state.objective()
    n_block = max(1, int(np.ceil(n * block_size)))
    z_corr = z.copy()
    for _ in range(max_iter):
        state.update(rng, n_block, max_iter_cluster, tol_cluster)
        z_corr = _moe_correct(z, state.r, phi, lamb)
        state.move(z_corr)
        cur_harmony = state.objective()
        if abs(prev_harmony - cur_harmony) <= tol_harmony * abs(prev_harmony):
            break
        prev_harmony = cur_harmony
    return z_corr


def _memberships(dist: np.ndarray, sigma: float) -> np.ndarray:
    """Soft k-means memberships (rows sum to 1) from squared cosine distances to centroids."""
    r = -dist / sigma
    r -= r.max(axis=1, keepdims=True)
    r = np.exp(r)
    return r / r.sum(axis=1, keepdims=True)


@dataclass
class _HarmonyClusters:
    """The soft clustering of a Harmony run and its batch-diversity bookkeeping.

    Attributes
    ----------
    z_cos : ndarray of shape (n, d)
        The current (corrected) embedding, rows scaled to unit length.
    y : ndarray of shape (k, d)
        Unit centroids.
    dist : ndarray of shape (n, k)
        Squared Euclidean distance of the unit rows to the centroids, ``2 (1 - cos)``.
    r : ndarray of shape (n, k)
        Memberships.
    o, e : ndarray of shape (k, B)
        Observed and expected (from the batches' overall proportions) membership per batch.
    phi : ndarray of shape (n, B)
        One-hot batch of each row.
    batch_idx : ndarray of shape (n,)
    pr_b : ndarray of shape (B,)
        Fraction of rows in each batch.
    theta_b : ndarray of shape (B,)
        Diversity penalty of each batch.
    sigma : float
    """

    z_cos: np.ndarray
    y: np.ndarray
    dist: np.ndarray
    r: np.ndarray
    o: np.ndarray
    e: np.ndarray
    phi: np.ndarray
    batch_idx: np.ndarray
    pr_b: np.ndarray
    theta_b: np.ndarray
    sigma: float

    @classmethod
    def start(
        cls,
        z: np.ndarray,
        phi: np.ndarray,
        batch_idx: np.ndarray,
        k: int,
        rng: np.random.Generator,
        theta: float,
        sigma: float,
    ) -> _HarmonyClusters:
        """Spherical k-means centroids of ``z`` and the memberships they give."""
        n, n_b = phi.shape
        pr_b = phi.sum(axis=0) / n
        theta_b = np.full(n_b, float(theta))
        z_cos = _l2_rows(z.copy())
        y = _kmeans_cosine(z_cos, k, rng)
        dist = 2.0 * (1.0 - z_cos @ y.T)
        r = _memberships(dist, sigma)
        e = np.outer(r.sum(axis=0), pr_b)  # (k, B) expected
        o = r.T @ phi  # (k, B) observed
        return cls(z_cos, y, dist, r, o, e, phi, batch_idx, pr_b, theta_b, sigma)

    def objective(self) -> float:
        """k-means cost + entropy of the memberships + diversity penalty."""
        r, o, e, sigma = self.r, self.o, self.e, self.sigma
        kmeans = float(np.sum(r * self.dist))
        entropy = float(sigma * np.sum(r * np.log(r + 1e-300)))
        diversity = float(sigma * np.sum(self.theta_b[None, :] * o * np.log((o + 1) / (e + 1))))
        return kmeans + entropy + diversity

    def update(self, rng: np.random.Generator, n_block: int, max_iter: int, tol: float) -> None:
        """Clustering with the diversity penalty: centroids, then memberships block by block."""
        prev = self.objective()
        n = self.r.shape[0]
        for _ in range(max_iter):
            self.y = _l2_rows(self.r.T @ self.z_cos)
            self.dist = 2.0 * (1.0 - self.z_cos @ self.y.T)
            order = rng.permutation(n)
            for s in range(0, n, n_block):
                self._update_block(order[s : s + n_block])
            cur = self.objective()
            if abs(prev - cur) <= tol * abs(prev):
                break
            prev = cur

    def _update_block(self, rows: np.ndarray) -> None:
        """New memberships of ``rows``, penalised towards the batches' overall proportions."""
        r, phi, pr_b = self.r, self.phi, self.pr_b
        self.e -= np.outer(r[rows].sum(axis=0), pr_b)
        self.o -= r[rows].T @ phi[rows]
        rb = _memberships(self.dist[rows], self.sigma)
        penalty = ((self.e + 1.0) / (self.o + 1.0)) ** self.theta_b[None, :]  # (k, B)
        rb = rb * penalty[:, self.batch_idx[rows]].T
        rb /= rb.sum(axis=1, keepdims=True)
        r[rows] = rb
        self.e += np.outer(rb.sum(axis=0), pr_b)
        self.o += rb.T @ phi[rows]

    def move(self, z_corr: np.ndarray) -> None:
        """Take the corrected embedding (centroids unchanged)."""
        self.z_cos = _l2_rows(z_corr)
        self.dist = 2.0 * (1.0 - self.z_cos @ self.y.T)


def _moe_correct(z: np.ndarray, r: np.ndarray, phi: np.ndarray, lamb: float) -> np.ndarray:
    """Mixture-of-experts ridge correction: ``z`` less each cluster's batch offsets."""
    n, n_b = phi.shape
    design = np.hstack([np.ones((n, 1)), phi])  # (n, 1 + B)
    ridge = np.diag(np.concatenate([[0.0], np.full(n_b, float(lamb))]))
    z_corr = z.copy()
    for c in range(r.shape[1]):
        w_c = r[:, c]
        a = (design * w_c[:, None]).T @ design + ridge
        beta = np.linalg.solve(a, (design * w_c[:, None]).T @ z)  # (1 + B, d)
        beta[0] = 0.0  # keep the intercept (the cluster's own position)
        z_corr -= w_c[:, None] * (design @ beta)
    return z_corr


def harmony(
    profiles: pd.DataFrame,
    batch_col: str = "Metadata_Batch",
    n_components: int | None = 50,
    theta: float = 2.0,
    sigma: float = 0.1,
    lamb: float = 1.0,
    n_clusters: int | None = None,
    max_iter: int = 10,
    seed: int = 0,
    features: Sequence[str] | None = None,
    prefix: str = "Harmony_PC",
) -> pd.DataFrame:
    """Correct batch effects with Harmony on the principal components of the profiles.

    The features are reduced to ``n_components`` principal components (centred, not scaled;
    signs fixed), which Harmony corrects across the groups of ``batch_col``. The result holds
    the metadata columns and the corrected components as features named
    ``{prefix}0001 ...`` (the original features are replaced). With a single batch the
    components are returned uncorrected.

    Parameters
    ----------
    profiles : DataFrame of shape (n_rows, n_columns)
        Features without missing values.
    batch_col : str
        Column holding each row's batch.
    n_components : int or None
        Number of principal components (at most ``min(n_rows, n_features)``); None keeps all.
    theta, sigma, lamb, n_clusters, max_iter, seed
        See :func:`harmony_embedding`.
    features : sequence of str, optional
    prefix : str
        Prefix of the output feature names.

    Returns
    -------
    DataFrame of shape (n_rows, n_metadata + n_components)
    """
    require_columns(profiles, [batch_col], "harmony: batch column (config campaign.harmony)")
    feats = resolve_features(profiles, features, "harmony")
    x = as_float64(profiles, feats)
    if np.isnan(x).any():
        bad = [f for f, b in zip(feats, np.isnan(x).any(axis=0), strict=True) if b]
        raise ValueError(f"harmony: features with missing values {bad[:5]}")
    if profiles[batch_col].isna().any():
        raise ValueError(f"harmony: column {batch_col!r} has missing values")
    k = min(x.shape) if n_components is None else min(int(n_components), *x.shape)
    if k < 1:
        raise ValueError(f"harmony: n_components must be >= 1, got {n_components}")
    pcs = _pca(x, k)
    corrected = harmony_embedding(
        pcs,
        profiles[batch_col].astype(str).to_numpy(),
        theta=theta,
        sigma=sigma,
        lamb=lamb,
        n_clusters=n_clusters,
        max_iter=max_iter,
        seed=seed,
    )
    meta = profiles[metadata_columns(profiles)].reset_index(drop=True)
    names = [f"{prefix}{i + 1:04d}" for i in range(corrected.shape[1])]
    out = pd.concat([meta, pd.DataFrame(corrected, columns=names)], axis=1)
    out.index = profiles.index
    return out
