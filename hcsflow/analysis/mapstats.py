"""Mean average precision (mAP) with p-values: copairs' null and a label-permutation null.

A profile's average precision is how well the profiles it should retrieve (positives) rank
before the others (negatives) by similarity to it; a group's mAP is the mean over its
profiles (copairs; Kalinin et al. 2025, Nat Commun 16:5181).
"""

from __future__ import annotations

import tempfile
from itertools import combinations, product
from math import comb

import numpy as np
import pandas as pd

from hcsflow.analysis._common import _check_distance, similarity_matrix


def _map_with_pvalues(
    meta: pd.DataFrame,
    x: np.ndarray,
    pos_sameby: list[str],
    pos_diffby: list[str],
    neg_sameby: list[str],
    neg_diffby: list[str],
    group: str,
    distance: str,
    null_size: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Average precision per profile and mAP + p-value per ``group`` (copairs).

    Returns (ap per row of ``meta``, map per group with columns group, mean_average_precision,
    p_value). Groups without positive pairs are absent from the second table.
    """
    from copairs.map import average_precision
    from copairs.map.map import get_map_pvalue
    from copairs.matching import UnpairedException

    try:
        ap = average_precision(
            meta,
            x,
            pos_sameby=pos_sameby,
            pos_diffby=pos_diffby,
            neg_sameby=neg_sameby,
            neg_diffby=neg_diffby,
            distance=distance,
            progress_bar=False,
        )
    except UnpairedException:
        ap = meta.reset_index(drop=True).copy()
        ap["average_precision"] = np.nan
        ap["n_pos_pairs"] = 0
        ap["n_total_pairs"] = 0
    valid = ap["average_precision"].notna() & (ap["n_pos_pairs"] > 0)
    if not valid.any():
        empty = pd.DataFrame({group: pd.Series(dtype=meta[group].dtype)}).assign(
            mean_average_precision=np.nan, p_value=np.nan
        )
        return ap, empty
    # copairs caches null distributions on disk keyed only by (n_total, n_pos), while the
    # seed of each one depends on the set of configurations of the call: a shared cache would
    # make p-values depend on earlier calls. A private cache keeps results reproducible.
    with tempfile.TemporaryDirectory(prefix="hcsflow-copairs-") as cache:
        maps = get_map_pvalue(
            ap,
            sameby=[group],
            null_size=null_size,
            seed=seed,
            progress_bar=False,
            max_workers=1,
            cache_dir=cache,
        )
    maps = maps[[group, "mean_average_precision", "p_value"]]
    return ap, maps


def _ranks(sim: np.ndarray) -> np.ndarray:
    """Rank (1 = most similar) of every other row in each row's ordering; diagonal 0."""
    m = len(sim)
    s = sim.astype(np.float64, copy=True)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    ranks = np.empty((m, m), dtype=np.int64)
    ranks[np.arange(m)[:, None], order] = np.arange(1, m + 1)[None, :]
    np.fill_diagonal(ranks, 0)
    return ranks


def _group_map(ranks: np.ndarray, members: np.ndarray) -> np.ndarray:
    """mAP of pseudo-groups given the full rankings of a pool of wells.

    Parameters
    ----------
    ranks : ndarray of shape (M, M)
        ``ranks[i, j]``: rank of well ``j`` among the other ``M - 1`` wells by similarity to
        ``i`` (from :func:`_ranks`).
    members : ndarray of shape (B, n), int
        ``B`` pseudo-groups of ``n >= 2`` distinct pool indices each.

    Returns
    -------
    ndarray of shape (B,)
        Mean over the group's wells of the average precision of retrieving the other
        ``n - 1`` members before the rest of the pool (copairs' definition).
    """
    b, n = members.shape
    # r[:, a, k]: rank of the k-th other member by similarity to member a
    others = np.array([[j for j in range(n) if j != a] for a in range(n)])
    r = ranks[members[:, :, None], members[:, others]]
    r.sort(axis=2)
    precision = np.arange(1, n)[None, None, :] / r
    return precision.mean(axis=2).mean(axis=1)


def permutation_map_pvalues(
    x: np.ndarray,
    groups: np.ndarray,
    is_negcon: np.ndarray,
    *,
    strata: np.ndarray | None = None,
    distance: str = "cosine",
    null_size: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """mAP of each group against the negative controls, with a label-permutation p-value.

    For a group of ``n`` wells, the pool is its wells plus every negative-control well. Each
    well's average precision is how well the group's other wells rank before the pool's
    negative controls (copairs' mAP against negcon). Under the null hypothesis that the
    treatment does nothing, its wells are exchangeable with the negative controls, so the
    group's mAP is compared with the mAP of pseudo-groups: every way (or, when there are more
    than ``null_size``, random ways) of choosing ``n`` wells of the pool, with as many wells
    from each stratum (plate) as the group has. The p-value, ``#{pseudo-groups with mAP >=
    observed} / #pseudo-groups`` (the observed group counts as one), is valid whatever the
    number of replicates, and its smallest value is one over the number of pseudo-groups
    rather than one over the number of negative controls, as when each well's rank is
    compared with a null of its own.

    Parameters
    ----------
    x : ndarray of shape (n_wells, n_features)
    groups : ndarray of shape (n_wells,), int
        Group code of each well; ignored for negative controls.
    is_negcon : ndarray of shape (n_wells,), bool
    strata : ndarray of shape (n_wells,), optional
        Stratum of each well (e.g. plate); pseudo-groups keep the group's count per stratum.
    distance : {"cosine", "correlation", "euclidean"}
    null_size : int
        Pseudo-groups drawn when they cannot all be enumerated.
    seed : int

    Returns
    -------
    DataFrame
        Columns ``group``, ``mean_average_precision``, ``p_value``, ``n_null`` (number of
        pseudo-groups), one row per group with at least two wells, sorted by group.
    """
    _check_distance(distance)
    is_negcon = np.asarray(is_negcon, dtype=bool)
    groups = np.asarray(groups)
    neg_idx = np.flatnonzero(is_negcon)
    strata = np.zeros(len(groups), dtype=np.int64) if strata is None else np.asarray(strata)
    sim_all = similarity_matrix(x, distance)
    rows = []
    for g in np.unique(groups[~is_negcon]):
        idx = np.flatnonzero((groups == g) & ~is_negcon)
        if len(idx) < 2:
            continue
        pool = np.concatenate([idx, neg_idx])
        ranks = _ranks(sim_all[np.ix_(pool, pool)])
        observed = float(_group_map(ranks, np.arange(len(idx))[None, :])[0])
        pool_strata = strata[pool]
        blocks = []  # (positions in pool, wells to draw) per stratum of the group
        for st in np.unique(strata[idx]):
            blocks.append((np.flatnonzero(pool_strata == st), int((strata[idx] == st).sum())))
        total = 1
        for positions, k in blocks:
            total *= comb(len(positions), k)
        if total <= null_size:
            draws = np.array(
                [
                    np.concatenate(choice)
                    for choice in product(
                        *(
                            [np.array(c) for c in combinations(positions, k)]
                            for positions, k in blocks
                        )
                    )
                ]
            )
            null = _group_map(ranks, draws)
            p = float(np.sum(null >= observed - 1e-12)) / len(null)
            n_null = len(null)
        else:
            rng = np.random.default_rng([seed, int(g)])
            parts = []
            for positions, k in blocks:
                keys = rng.random((null_size, len(positions)))
                parts.append(positions[np.argsort(keys, axis=1)[:, :k]])
            null = _group_map(ranks, np.concatenate(parts, axis=1))
            p = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + null_size)
            n_null = null_size
        rows.append((g, observed, p, n_null))
    return pd.DataFrame(
        rows, columns=["group", "mean_average_precision", "p_value", "n_null"]
    ).astype({"n_null": "int64"})
