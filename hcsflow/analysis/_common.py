"""Helpers shared by the analysis modules: feature matrices, similarities, group codes, FDR."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hcsflow.profiling.columns import feature_columns

#: Distances accepted by every function of the package (copairs names).
DISTANCES = ("cosine", "correlation", "euclidean")


def _features(df: pd.DataFrame, features: Sequence[str] | None, what: str) -> np.ndarray:
    """Feature matrix of ``df`` (float64, shape (n_rows, n_features)); NaN is an error."""
    cols = list(features) if features is not None else feature_columns(df)
    if not cols:
        raise ValueError(f"{what}: no feature columns (numeric, not starting with Metadata_)")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: feature columns missing: {missing[:5]}")
    x = df[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x)
    if bad.any():
        col = cols[int(np.argmax(bad.any(axis=0)))]
        raise ValueError(
            f"{what}: feature {col!r} has NaN/inf values in {int(bad.any(axis=1).sum())} rows; "
            "drop or impute them first (feature selection removes NA columns)"
        )
    return x


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: required column(s) {missing} missing")


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def similarity_matrix(x: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """Pairwise similarity of the rows of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n, d)
    distance : {"cosine", "correlation", "euclidean"}
        Cosine similarity, Pearson correlation, or ``1 / (1 + euclidean distance)``
        (the conventions of copairs).

    Returns
    -------
    ndarray of shape (n, n)
    """
    _check_distance(distance)
    x = np.asarray(x, dtype=np.float64)
    if distance == "euclidean":
        sq = (x**2).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
        return 1.0 / (1.0 + np.sqrt(d2))
    if distance == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norm > 0, norm, 1.0)
    return xn @ xn.T


def _group_codes(df: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    """Integer code of each row's group (NaN is a value of its own), stable across runs."""
    keys = df[list(by)].astype("string").fillna("<NA>")
    return keys.groupby(list(by), sort=True, dropna=False).ngroup().to_numpy()


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite entries of ``p`` (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    n = int(ok.sum())
    if n == 0:
        return q
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q
