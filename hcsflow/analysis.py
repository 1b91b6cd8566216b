"""Drug-response analysis of well and consensus profiles.

Phenotypic activity and MoA consistency are mean average precision (mAP) retrieval scores
computed with copairs (Kalinin et al. 2025, Nat Commun 16:5181): for each query profile, other
profiles are ranked by similarity and the average precision of retrieving the "positive" ones
(replicates of the same treatment, or compounds of the same MoA) among "negative" ones (negative
control wells, or compounds of other MoAs) is computed; the mean over a group's profiles is
compared with a permutation null to give a p-value, and p-values are FDR-corrected (q-values).

The not-same-compound (NSC) 1-nearest-neighbour MoA accuracy follows the BBBC021 protocol
(Ljosa et al. 2013; Ando et al. 2017): every compound x dose profile takes the MoA of its most
similar profile among those of *other* compounds (and, for NSCB, other batches).

UMAP (umap-learn, seeded, single-threaded so that it is deterministic) and clustering (HDBSCAN
or hierarchical) describe the landscape of consensus profiles.

Every function takes DataFrames whose non-feature columns start with ``Metadata_``; the feature
columns are all the other numeric columns. Inputs are never modified.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, product
from math import comb
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

COMPOUND = "Metadata_Compound"
DOSE = "Metadata_Dose"
ROLE = "Metadata_Role"
MOA = "Metadata_MoA"
BATCH = "Metadata_Batch"
PLATE = "Metadata_Plate"
WELL = "Metadata_Well"
NEGCON = "negcon"

#: Distances accepted by every function of this module (copairs names).
DISTANCES = ("cosine", "correlation", "euclidean")


# --------------------------------------------------------------------------------------------
# helpers


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Return the numeric columns of ``df`` that do not start with ``Metadata_``."""
    return [
        c
        for c, dtype in df.dtypes.items()
        if not str(c).startswith("Metadata_") and pd.api.types.is_numeric_dtype(dtype)
    ]


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


def adjacent_wells(wells: Sequence[str], plates: Sequence[str] | None = None) -> bool:
    """Whether a treatment's wells form one run of neighbouring wells on one plate.

    Parameters
    ----------
    wells : sequence of str
        Well names (``A01`` or ``A1``) of the treatment's wells.
    plates : sequence of str, optional
        Plate of each well.

    Returns
    -------
    bool
        True for two or more wells on a single plate that fill consecutive columns of one row
        or consecutive rows of one column (e.g. a dose series in ``O19``-``O24``). Such wells
        share a position effect, which an activity test cannot tell from the treatment's.
    """
    from hcsflow.layouts import split_well

    if len(wells) < 2 or (plates is not None and len(set(plates)) > 1):
        return False
    try:
        rc = [split_well(str(w)) for w in wells]
    except ValueError:
        return False
    rows = [_row_index(r) for r, _ in rc]
    cols = [c for _, c in rc]
    if len(set(rows)) == 1:
        return _consecutive(cols)
    return len(set(cols)) == 1 and _consecutive(rows)


def _consecutive(values: list[int]) -> bool:
    """Whether the integers are distinct and fill a range without a gap."""
    v = sorted(values)
    return v == list(range(v[0], v[0] + len(v)))


def _row_index(row: str) -> int:
    """``A`` -> 0, ``Z`` -> 25, ``AA`` -> 26."""
    value = 0
    for ch in row.upper():
        value = value * 26 + (ord(ch) - 64)
    return value - 1


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


# --------------------------------------------------------------------------------------------
# phenotypic activity


def phenotypic_activity(
    profiles: pd.DataFrame,
    *,
    group_by: Sequence[str] = (COMPOUND, DOSE),
    role_column: str = ROLE,
    negcon: str = NEGCON,
    exclude_roles: Sequence[str] = ("empty",),
    negcon_same_plate: bool = False,
    plate_column: str = PLATE,
    distance: str = "cosine",
    q_threshold: float = 0.05,
    fdr: str = "bh",
    null_size: int = 10000,
    seed: int = 0,
    features: Sequence[str] | None = None,
    pvalue: str = "copairs",
) -> pd.DataFrame:
    """Phenotypic activity of each treatment: mAP of its replicate wells against negcon wells.

    For each treatment well, the other replicate wells of the same treatment (positives) and
    the negative-control wells (negatives) are ranked by similarity to it; its average
    precision is how well replicates come first. The mean over a treatment's wells (mAP) is
    compared with a null distribution to give a p-value (``pvalue``): copairs' null of
    randomly ranked wells (``"copairs"``, default), or the mAP of pseudo-treatments drawn from the
    treatment's and the negcon wells, as many from each plate as the treatment has
    (``"permutation"``, :func:`permutation_map_pvalues`). The permutation null accounts for
    the averaging over a treatment's wells (copairs compares a treatment's mAP with the null
    of a single well's AP), so it calls more treatments that have many wells; with two
    replicates its smallest p-value is one over the number of pseudo-pairs, and pairs of
    negcon wells that are each other's nearest neighbours count against the treatment.
    ``"auto"`` takes the permutation null when the treatments have a median of at least
    three wells and ``negcon_same_plate`` is off, copairs' otherwise. Neither null knows the
    plate layout: a treatment whose wells sit side by side (a dose series in adjacent wells)
    shares their position effect, which both take for activity.
    q-values are
    Benjamini-Hochberg corrected over all treatments (``fdr="bh"``) or hierarchically, first
    over compounds (minimum p-value over its doses), then over the doses of compounds that
    pass (``fdr="hierarchical"``, needs ``group_by`` with a dose column).

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
        Well-level profiles (normalized), ``Metadata_*`` columns and features.
    group_by : sequence of str
        Columns defining a treatment (default compound x dose).
    role_column, negcon : str
        Column holding the plate-map role and the value marking negative controls.
    exclude_roles : sequence of str
        Roles left out entirely (e.g. empty wells).
    negcon_same_plate : bool
        Rank each well only against negcon wells of its own plate.
    distance : {"cosine", "correlation", "euclidean"}
    q_threshold : float
        A treatment is ``active`` when its q-value is below this.
    fdr : {"bh", "hierarchical"}
    null_size : int
        Size of the permutation null of each (n_positives, n_total) configuration.
    seed : int
    features : sequence of str, optional
        Feature columns (default: every numeric non-Metadata column).
    pvalue : {"auto", "copairs", "permutation"}
        Null distribution of the mAP (see above). ``"permutation"`` ranks against every
        negcon well, so it cannot be combined with ``negcon_same_plate``; it keeps each
        treatment's count of wells per plate (``plate_column``) when that column exists.

    Returns
    -------
    DataFrame
        One row per treatment (negative controls excluded), sorted by ``group_by``: the
        ``group_by`` columns, ``Metadata_MoA`` / role when present, ``n_replicates``,
        ``mean_average_precision``, ``p_value``, ``q_value``, ``active`` and
        ``negcon_distance`` (distance of the treatment's median profile to the median negcon
        well, in units of the median negcon well's distance to it; ~1 means negcon-like).
        Treatments with a single well have no replicate to retrieve: NaN scores, not active.
    """
    _check_distance(distance)
    if fdr not in ("bh", "hierarchical"):
        raise ValueError(f"fdr must be 'bh' or 'hierarchical', got {fdr!r}")
    if pvalue not in ("auto", "copairs", "permutation"):
        raise ValueError(f"pvalue must be 'auto', 'copairs' or 'permutation', got {pvalue!r}")
    if pvalue == "permutation" and negcon_same_plate:
        raise ValueError(
            "analysis.pvalue 'permutation' ranks every treatment against all negcon wells; "
            "it cannot be combined with analysis.negcon_same_plate true"
        )
    group_by = list(group_by)
    _require(profiles, group_by + [role_column], "phenotypic_activity")
    if negcon_same_plate:
        _require(profiles, [plate_column], "phenotypic_activity")
    df = profiles[~profiles[role_column].isin(list(exclude_roles))].reset_index(drop=True)
    is_neg = (df[role_column] == negcon).to_numpy()
    if not is_neg.any():
        raise ValueError(
            f"phenotypic_activity: no negative-control wells ({role_column} == {negcon!r})"
        )
    x = _features(df, features, "phenotypic_activity")
    if pvalue == "auto":
        wells = df.loc[~is_neg].groupby(group_by, dropna=False).size()
        many = len(wells) > 0 and float(wells.median()) >= 3
        pvalue = "permutation" if many and not negcon_same_plate else "copairs"

    meta = pd.DataFrame(
        {
            "group": np.where(is_neg, -1, _group_codes(df, group_by)),
            # negcon wells each get a unique reference so they are never positives of each other
            "ref": np.where(is_neg, np.arange(len(df)), -1),
            "negcon": is_neg,
        }
    )
    neg_sameby: list[str] = []
    if negcon_same_plate:
        meta["plate"] = df[plate_column].astype("string").fillna("<NA>").to_numpy()
        neg_sameby = ["plate"]
    if pvalue == "permutation":
        strata = (
            df[plate_column].astype("string").fillna("<NA>").to_numpy()
            if plate_column in df.columns
            else None
        )
        maps = permutation_map_pvalues(
            x,
            meta["group"].to_numpy(),
            is_neg,
            strata=strata,
            distance=distance,
            null_size=null_size,
            seed=seed,
        )[["group", "mean_average_precision", "p_value"]]
    else:
        _, maps = _map_with_pvalues(
            meta,
            x,
            pos_sameby=["group", "ref"],
            pos_diffby=[],
            neg_sameby=neg_sameby,
            neg_diffby=["negcon"],
            group="group",
            distance=distance,
            null_size=null_size,
            seed=seed,
        )

    keep = [c for c in (MOA, role_column) if c in df.columns and c not in group_by]
    trt = df.loc[~is_neg, group_by + keep].copy()
    codes = meta.loc[~is_neg, "group"].to_numpy()
    trt["_group"] = codes
    grouped = trt.groupby("_group", sort=True)
    out = grouped.agg({c: "first" for c in group_by + keep}).join(
        grouped.size().rename("n_replicates")
    )
    out = out.join(maps.set_index("group").rename_axis("_group"), how="left")

    # distance to negcon
    neg_centre = np.median(x[is_neg], axis=0)
    neg_d = np.linalg.norm(x[is_neg] - neg_centre, axis=1)
    scale = float(np.median(neg_d)) or 1.0
    med = pd.DataFrame(x[~is_neg]).groupby(codes, sort=True).median().to_numpy()
    out["negcon_distance"] = np.linalg.norm(med - neg_centre, axis=1) / scale

    p = out["p_value"].to_numpy(dtype=np.float64)
    if fdr == "bh":
        q = _bh(p)
    else:
        if len(group_by) < 2:
            raise ValueError("fdr='hierarchical' needs group_by with compound and dose columns")
        q = _hierarchical_q(out, group_by[:-1], p)
    out["q_value"] = q
    out["active"] = np.nan_to_num(q, nan=1.0) < q_threshold
    out["p_value_method"] = pvalue
    if WELL in df.columns:
        plates = df[plate_column].astype("string") if plate_column in df.columns else None
        adjacent = {}
        for code, rows in grouped.groups.items():
            wl = df.loc[rows, WELL].astype(str).tolist()
            adjacent[code] = adjacent_wells(
                wl, None if plates is None else plates.loc[rows].tolist()
            )
        out["adjacent_wells"] = pd.Series(adjacent).reindex(out.index).fillna(False).astype(bool)
        n_multi = int((out["n_replicates"] >= 2).sum())
        n_adj = int(out["adjacent_wells"].sum())
        if n_multi and n_adj > n_multi / 2:
            logger.warning(
                "the wells of %d of %d treatments sit side by side on one plate: their "
                "activity cannot be told from a position effect (see adjacent_wells)",
                n_adj,
                n_multi,
            )
    out = out.reset_index(drop=True)
    cols = (
        group_by
        + keep
        + [
            "n_replicates",
            "mean_average_precision",
            "p_value",
            "q_value",
            "active",
            "negcon_distance",
            "p_value_method",
        ]
        + (["adjacent_wells"] if "adjacent_wells" in out.columns else [])
    )
    out = out[cols].sort_values(group_by, kind="stable").reset_index(drop=True)
    out["n_replicates"] = out["n_replicates"].astype("int64")
    return out


def _hierarchical_q(table: pd.DataFrame, by: list[str], p: np.ndarray) -> np.ndarray:
    """Two-stage FDR: BH over groups (min p), then BH within groups that pass."""
    keys = _group_codes(table, by)
    q = np.full(len(p), np.nan)
    uniq = np.unique(keys)
    pmin = np.array(
        [np.nanmin(p[keys == k]) if np.isfinite(p[keys == k]).any() else np.nan for k in uniq]
    )
    q1 = _bh(pmin)
    for k, qk in zip(uniq, q1, strict=True):
        idx = np.flatnonzero(keys == k)
        if np.isfinite(qk) and qk < 1.0:
            inner = _bh(p[idx])
            q[idx] = np.maximum(inner, qk)
        else:
            q[idx] = np.where(np.isfinite(p[idx]), 1.0, np.nan)
    return q


# --------------------------------------------------------------------------------------------
# MoA consistency and NSC accuracy


def moa_consistency(
    profiles: pd.DataFrame,
    *,
    moa_column: str = MOA,
    compound_column: str = COMPOUND,
    role_column: str = ROLE,
    negcon: str = NEGCON,
    distance: str = "cosine",
    q_threshold: float = 0.05,
    null_size: int = 10000,
    seed: int = 0,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """MoA consistency: mAP of retrieving other compounds of the same MoA.

    Each profile (consensus per compound x dose, or wells) ranks every profile of other
    compounds; those sharing its MoA are positives, those of other MoAs negatives. Profiles of
    the same compound are neither (so replicates do not inflate the score). Negative controls
    and profiles without MoA are left out. Multi-label MoAs (``a|b``) count as one label.

    Parameters
    ----------
    profiles : DataFrame of shape (n, n_columns)
    moa_column, compound_column, role_column, negcon : str
    distance : {"cosine", "correlation", "euclidean"}
    q_threshold : float
    null_size, seed : int
    features : sequence of str, optional

    Returns
    -------
    DataFrame
        One row per MoA, sorted: ``Metadata_MoA`` (named ``moa_column``), ``n_profiles``,
        ``n_compounds``, ``mean_average_precision``, ``p_value``, ``q_value`` (BH over MoAs),
        ``consistent`` (q below ``q_threshold``). MoAs with a single compound have NaN scores.
    """
    _check_distance(distance)
    _require(profiles, [moa_column, compound_column], "moa_consistency")
    df = profiles[profiles[moa_column].notna()]
    if role_column in df.columns:
        df = df[df[role_column] != negcon]
    df = df.reset_index(drop=True)
    cols = [moa_column, "n_profiles", "n_compounds", "mean_average_precision", "p_value"]
    if df.empty:
        out = pd.DataFrame({c: [] for c in cols})
    else:
        x = _features(df, features, "moa_consistency")
        meta = pd.DataFrame(
            {
                "moa": _group_codes(df, [moa_column]),
                "compound": _group_codes(df, [compound_column]),
            }
        )
        _, maps = _map_with_pvalues(
            meta,
            x,
            pos_sameby=["moa"],
            pos_diffby=["compound"],
            neg_sameby=[],
            neg_diffby=["moa", "compound"],
            group="moa",
            distance=distance,
            null_size=null_size,
            seed=seed,
        )
        small = df[[moa_column, compound_column]].copy()
        small["_moa"] = meta["moa"].to_numpy()
        g = small.groupby("_moa", sort=True)
        out = pd.DataFrame(
            {
                moa_column: g[moa_column].first(),
                "n_profiles": g.size(),
                "n_compounds": g[compound_column].nunique(),
            }
        ).join(maps.set_index("moa"), how="left")
        out = out.reset_index(drop=True)
    out["q_value"] = _bh(out["p_value"].to_numpy(dtype=np.float64))
    out["consistent"] = np.nan_to_num(out["q_value"].to_numpy(dtype=np.float64), nan=1.0) < (
        q_threshold
    )
    return out.sort_values(moa_column, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class NSCResult:
    """Not-same-compound 1-NN MoA classification.

    Attributes
    ----------
    accuracy : float
        Fraction of profiles whose nearest profile of another compound has the same MoA.
    accuracy_nscb : float
        Same, excluding also profiles of the same batch (NaN without batches).
    predictions : DataFrame
        Per profile: compound, MoA, ``predicted_moa``, ``neighbor_compound``,
        ``similarity``, ``correct`` (and ``predicted_moa_nscb``, ``correct_nscb``).
    """

    accuracy: float
    accuracy_nscb: float
    predictions: pd.DataFrame = field(repr=False)


def nsc_accuracy(
    consensus: pd.DataFrame,
    *,
    moa_column: str = MOA,
    compound_column: str = COMPOUND,
    batch_column: str | None = BATCH,
    role_column: str = ROLE,
    negcon: str = NEGCON,
    distance: str = "cosine",
    features: Sequence[str] | None = None,
) -> NSCResult:
    """Not-same-compound (NSC) 1-nearest-neighbour MoA accuracy (BBBC021 protocol).

    Every profile with a MoA shared by at least two compounds (negative controls excluded) is
    assigned the MoA of its most similar profile among those of other compounds; for the not-same-compound-or-batch
    variant (NSCB), profiles of the same batch are excluded too. Ties go to the first profile
    in table order.

    Parameters
    ----------
    consensus : DataFrame of shape (n, n_columns)
        Usually one row per compound x dose.
    moa_column, compound_column : str
    batch_column : str or None
        NSCB is computed when this column exists and holds more than one batch.
    role_column, negcon : str
    distance : {"cosine", "correlation", "euclidean"}
    features : sequence of str, optional

    Returns
    -------
    NSCResult
    """
    _check_distance(distance)
    _require(consensus, [moa_column, compound_column], "nsc_accuracy")
    df = consensus[consensus[moa_column].notna()]
    if role_column in df.columns:
        df = df[df[role_column] != negcon]
    # a profile whose MoA no other compound carries cannot be classified correctly
    n_comp = df.groupby(moa_column)[compound_column].transform("nunique")
    df = df[n_comp >= 2].reset_index(drop=True)
    pred = df[[compound_column, moa_column]].copy()
    if len(df) < 2:
        pred["predicted_moa"] = pd.Series([None] * len(df), dtype="object")
        pred["correct"] = False
        return NSCResult(float("nan"), float("nan"), pred)
    x = _features(df, features, "nsc_accuracy")
    sim = similarity_matrix(x, distance)
    comp = _group_codes(df, [compound_column])
    moa = df[moa_column].to_numpy()
    excl = comp[:, None] == comp[None, :]

    def one_nn(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.where(mask, -np.inf, sim)
        nn = np.argmax(s, axis=1)
        ok = np.isfinite(s[np.arange(len(s)), nn])
        return np.where(ok, nn, -1), np.where(ok, s[np.arange(len(s)), nn], np.nan)

    nn, s = one_nn(excl)
    has = nn >= 0
    pred["predicted_moa"] = np.where(has, moa[np.maximum(nn, 0)], None)
    pred["neighbor_compound"] = np.where(
        has, df[compound_column].to_numpy()[np.maximum(nn, 0)], None
    )
    pred["similarity"] = s
    pred["correct"] = has & (pred["predicted_moa"].to_numpy() == moa)
    acc = float(pred.loc[has, "correct"].mean()) if has.any() else float("nan")
    acc_b = float("nan")
    if batch_column is not None and batch_column in df.columns:
        batch = _group_codes(df, [batch_column])
        if len(np.unique(batch)) > 1:
            nnb, _ = one_nn(excl | (batch[:, None] == batch[None, :]))
            hb = nnb >= 0
            pred["predicted_moa_nscb"] = np.where(hb, moa[np.maximum(nnb, 0)], None)
            pred["correct_nscb"] = hb & (pred["predicted_moa_nscb"].to_numpy() == moa)
            acc_b = float(pred.loc[hb, "correct_nscb"].mean()) if hb.any() else float("nan")
    return NSCResult(acc, acc_b, pred)


# --------------------------------------------------------------------------------------------
# embedding, clustering, neighbours, dose response


def embed_umap(
    consensus: pd.DataFrame,
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Two-dimensional UMAP embedding of profiles (deterministic for a given seed).

    umap-learn runs single-threaded with ``random_state=seed``, which makes it reproducible.
    ``n_neighbors`` is capped at ``n - 1``. With fewer than 5 profiles UMAP is not defined;
    the first two principal components are returned instead.

    Parameters
    ----------
    consensus : DataFrame of shape (n, n_columns)
    seed : int
    n_neighbors : int
    min_dist : float
    metric : str
        Any metric umap-learn accepts (``cosine``, ``euclidean``, ``correlation``, ...).
    features : sequence of str, optional

    Returns
    -------
    DataFrame of shape (n, 2)
        Columns ``UMAP_1``, ``UMAP_2``, indexed like ``consensus``.
    """
    x = _features(consensus, features, "embed_umap")
    n = len(x)
    if n < 5:
        xc = x - x.mean(axis=0)
        if n > 1 and np.any(xc):
            u, s, _ = np.linalg.svd(xc, full_matrices=False)
            emb = (u * s)[:, :2]
            # sign convention: largest-magnitude entry of each component positive
            signs = np.sign(emb[np.argmax(np.abs(emb), axis=0), np.arange(emb.shape[1])])
            emb = emb * np.where(signs == 0, 1, signs)
        else:
            emb = np.zeros((n, 0))
        emb = np.pad(emb, ((0, 0), (0, 2 - emb.shape[1])))
    else:
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=int(min(n_neighbors, n - 1)),
            min_dist=min_dist,
            metric=metric,
            random_state=seed,
            n_jobs=1,
            transform_seed=seed,
        )
        emb = reducer.fit_transform(x)
    return pd.DataFrame(
        np.asarray(emb, dtype=np.float64), index=consensus.index, columns=["UMAP_1", "UMAP_2"]
    )


def cluster(
    x: np.ndarray,
    method: str = "hdbscan",
    *,
    min_cluster_size: int = 3,
    min_samples: int | None = None,
    n_clusters: int | None = None,
    distance_threshold: float = 0.5,
    linkage: str = "average",
    metric: str = "cosine",
) -> np.ndarray:
    """Cluster the rows of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Profiles or an embedding of them.
    method : {"hdbscan", "hierarchical"}
        HDBSCAN (scikit-learn; Euclidean on ``x``, rows labelled -1 are noise) or
        agglomerative clustering with ``linkage`` on ``metric`` distance, cut at
        ``n_clusters`` or, when that is None, at ``distance_threshold``.
    min_cluster_size, min_samples : int
        HDBSCAN parameters.
    n_clusters : int or None
    distance_threshold : float
    linkage : {"average", "complete", "single", "ward"}
    metric : str
        Distance for hierarchical clustering (``ward`` needs ``euclidean``).

    Returns
    -------
    ndarray of shape (n,), int64
        Cluster labels, renumbered 0, 1, ... in order of first appearance (noise -1).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        if n < max(2, min_cluster_size):
            labels = np.full(n, -1)
        else:
            labels = HDBSCAN(
                min_cluster_size=max(2, min_cluster_size),
                min_samples=min_samples,
                copy=True,
            ).fit_predict(x)
    elif method == "hierarchical":
        from sklearn.cluster import AgglomerativeClustering

        if n < 2:
            labels = np.zeros(n, dtype=np.int64)
        else:
            if linkage == "ward" and metric != "euclidean":
                raise ValueError("hierarchical clustering with ward linkage needs metric euclidean")
            k = None if n_clusters is None else min(int(n_clusters), n)
            labels = AgglomerativeClustering(
                n_clusters=k,
                distance_threshold=None if k is not None else distance_threshold,
                metric=metric,
                linkage=linkage,
            ).fit_predict(x)
    else:
        raise ValueError(f"cluster method must be 'hdbscan' or 'hierarchical', got {method!r}")
    return _renumber(np.asarray(labels))


def _renumber(labels: np.ndarray) -> np.ndarray:
    out = np.full(len(labels), -1, dtype=np.int64)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels):
        if lab < 0:
            continue
        if lab not in mapping:
            mapping[int(lab)] = len(mapping)
        out[i] = mapping[int(lab)]
    return out


def nearest_neighbors(
    consensus: pd.DataFrame,
    k: int = 3,
    *,
    compound_column: str = COMPOUND,
    dose_column: str | None = DOSE,
    distance: str = "cosine",
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The ``k`` most similar profiles of *other* compounds for each profile.

    Returns
    -------
    DataFrame of shape (n, 3 * k)
        Indexed like ``consensus``: ``Metadata_Neighbor_{i}`` (compound),
        ``Metadata_Neighbor_{i}_Dose`` and ``Metadata_Neighbor_{i}_Similarity`` for
        i = 1..k (missing neighbours are null).
    """
    x = _features(consensus, features, "nearest_neighbors")
    sim = similarity_matrix(x, distance)
    comp = _group_codes(consensus, [compound_column])
    sim = np.where(comp[:, None] == comp[None, :], -np.inf, sim)
    order = np.argsort(-sim, axis=1, kind="stable")
    names = consensus[compound_column].to_numpy()
    doses = consensus[dose_column].to_numpy() if dose_column in consensus.columns else None
    out: dict[str, Any] = {}
    rows = np.arange(len(x))
    for i in range(k):
        if i < len(x):
            j = order[:, i]
            s = sim[rows, j]
            ok = np.isfinite(s)
        else:
            j = np.zeros(len(x), dtype=int)
            s = np.full(len(x), np.nan)
            ok = np.zeros(len(x), dtype=bool)
        out[f"Metadata_Neighbor_{i + 1}"] = pd.Series(
            np.where(ok, names[j] if len(x) else [], None), dtype="object"
        )
        if doses is not None:
            out[f"Metadata_Neighbor_{i + 1}_Dose"] = np.where(
                ok, doses[j].astype(np.float64) if len(x) else [], np.nan
            )
        out[f"Metadata_Neighbor_{i + 1}_Similarity"] = np.where(ok, s, np.nan)
    return pd.DataFrame(out).set_axis(consensus.index)


def simes_pvalue(p: np.ndarray) -> float:
    """Simes' combined p-value of a family of p-values (NaN entries ignored).

    ``min_i(m * p_(i) / i)`` over the sorted finite p-values ``p_(1) <= ... <= p_(m)``: a valid
    p-value for "no member of the family is a true effect" when the members are independent or
    positively dependent (Simes 1986), and never above Bonferroni's ``m * min(p)``.

    Parameters
    ----------
    p : ndarray of shape (n,)

    Returns
    -------
    float
        NaN when no entry is finite.
    """
    v = np.sort(np.asarray(p, dtype=np.float64)[np.isfinite(p)])
    if v.size == 0:
        return float("nan")
    return float(min(1.0, np.min(v * v.size / np.arange(1, v.size + 1))))


def compound_activity(
    activity: pd.DataFrame,
    *,
    compound_column: str = COMPOUND,
    q_threshold: float = 0.05,
    combine: str = "simes",
) -> pd.DataFrame:
    """Compound-level activity calls from the per-dose results of :func:`phenotypic_activity`.

    A compound is active when at least one of its doses has an effect. Each compound's dose
    p-values are combined into one p-value by Simes' method (:func:`simes_pvalue`), and these
    are Benjamini-Hochberg corrected over compounds: the false discovery rate is controlled
    among compounds called active. This is the first level of a hierarchical (compound, then
    dose) testing procedure (Benjamini & Bogomolov 2014). ``combine="min"`` takes the smallest
    dose p-value instead (the first stage of copairs' hierarchical correction and of
    ``fdr="hierarchical"``); that is not a valid p-value (the minimum of m null p-values is
    below alpha with probability about m * alpha), so it calls inactive compounds with many
    doses too often; it is offered for comparison.

    Parameters
    ----------
    activity : DataFrame
        One row per treatment with ``compound_column`` and ``p_value`` (and ``active``,
        ``mean_average_precision``, ``Metadata_MoA`` / role when present).
    compound_column : str
    q_threshold : float
        A compound is ``active`` when its q-value is below this.
    combine : {"simes", "min"}
        How the dose p-values of a compound are combined.

    Returns
    -------
    DataFrame
        One row per compound (sorted): ``n_doses`` (treatments tested, i.e. with a p-value),
        ``p_value`` (combined), ``q_value`` (BH over compounds), ``active``,
        ``n_active_doses`` (doses active in the per-dose table, when it has ``active``) and
        MoA / role columns when present.
    """
    _require(activity, [compound_column, "p_value"], "compound_activity")
    if combine not in ("simes", "min"):
        raise ValueError(f"compound_activity: combine must be 'simes' or 'min', got {combine!r}")
    keep = [c for c in (MOA, ROLE) if c in activity.columns and c != compound_column]
    rows = []
    for comp, g in activity.groupby(compound_column, sort=True, dropna=False):
        p = g["p_value"].to_numpy(dtype=np.float64)
        row = {compound_column: comp}
        row.update({c: g[c].iloc[0] for c in keep})
        row["n_doses"] = int(np.isfinite(p).sum())
        if combine == "simes":
            row["p_value"] = simes_pvalue(p)
        else:
            row["p_value"] = float(np.min(p[np.isfinite(p)])) if np.isfinite(p).any() else np.nan
        if "active" in g.columns:
            row["n_active_doses"] = int(g["active"].sum())
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out.assign(p_value=pd.Series(dtype="float64"), q_value=np.nan, active=False)
    out["q_value"] = _bh(out["p_value"].to_numpy(dtype=np.float64))
    out["active"] = np.nan_to_num(out["q_value"].to_numpy(), nan=1.0) < q_threshold
    return out


def dose_response(
    activity: pd.DataFrame,
    *,
    compound_column: str = COMPOUND,
    dose_column: str = DOSE,
    q_threshold: float = 0.05,
) -> pd.DataFrame:
    """Summarize each compound's response across doses from a :func:`phenotypic_activity` table.

    Returns
    -------
    DataFrame
        One row per compound: ``n_doses``, ``n_active_doses``, ``lowest_active_dose`` (NaN if
        none), ``max_mean_average_precision``, ``max_negcon_distance``,
        ``dose_distance_spearman`` (rank correlation of dose and negcon distance; NaN with
        fewer than 3 doses), ``active`` (any dose active), and the compound-level test of
        :func:`compound_activity`: ``compound_p_value`` (Simes over doses),
        ``compound_q_value`` (BH over compounds) and ``compound_active`` (q below
        ``q_threshold``).
    """
    _require(activity, [compound_column, dose_column, "active", "negcon_distance"], "dose_response")
    rows = []
    for comp, g in activity.groupby(compound_column, sort=True):
        g = g.sort_values(dose_column)
        act = g.loc[g["active"], dose_column]
        rho = np.nan
        if len(g) >= 3 and g[dose_column].nunique() >= 3:
            rho = float(g[dose_column].rank().corr(g["negcon_distance"].rank(), method="pearson"))
        rows.append(
            {
                compound_column: comp,
                "n_doses": int(g[dose_column].nunique()),
                "n_active_doses": int(g["active"].sum()),
                "lowest_active_dose": float(act.min()) if len(act) else np.nan,
                "max_mean_average_precision": float(g["mean_average_precision"].max()),
                "max_negcon_distance": float(g["negcon_distance"].max()),
                "dose_distance_spearman": rho,
                "active": bool(len(act)),
            }
        )
    out = pd.DataFrame(rows)
    if "p_value" in activity.columns and len(out):
        comp = compound_activity(
            activity, compound_column=compound_column, q_threshold=q_threshold
        ).set_index(compound_column)
        key = out[compound_column]
        out["compound_p_value"] = key.map(comp["p_value"]).to_numpy(dtype=np.float64)
        out["compound_q_value"] = key.map(comp["q_value"]).to_numpy(dtype=np.float64)
        out["compound_active"] = key.map(comp["active"]).fillna(False).to_numpy(dtype=bool)
    return out


# --------------------------------------------------------------------------------------------
# the analysis stage


@dataclass(frozen=True)
class AnalysisResult:
    """Tables written by the analysis stage and summary numbers for provenance."""

    activity: pd.DataFrame
    consistency: pd.DataFrame
    clusters: pd.DataFrame
    dose_response: pd.DataFrame
    summary: dict[str, Any]


DEFAULTS: dict[str, Any] = {
    "activity_by": [COMPOUND, DOSE],
    "negcon_role": NEGCON,
    "negcon_same_plate": False,
    "distance": "cosine",
    "q_threshold": 0.05,
    "fdr": "bh",
    "pvalue": "copairs",
    "null_size": 10000,
    "seed": 0,
    "moa_active_only": True,
    "n_neighbors": 3,
    "umap": {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"},
    "cluster": {
        "method": "hdbscan",
        "space": "umap",
        "active_only": True,
        "min_cluster_size": 3,
        "min_samples": None,
        "n_clusters": None,
        "distance_threshold": 0.5,
        "linkage": "average",
    },
}


def _merged(config: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for k, v in (config or {}).items():
        if k not in cfg:
            raise ValueError(f"analysis: unknown config key {k!r}")
        if isinstance(cfg[k], dict):
            unknown = set(v) - set(cfg[k])
            if unknown:
                raise ValueError(f"analysis.{k}: unknown config key(s) {sorted(unknown)}")
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def run_analysis(
    profiles: pd.DataFrame,
    consensus: pd.DataFrame,
    config: Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Run the whole analysis stage: activity, consistency, NSC, UMAP, clusters.

    Parameters
    ----------
    profiles : DataFrame
        Well-level campaign profiles (normalized, feature-selected).
    consensus : DataFrame
        One row per treatment (``activity_by`` columns), same features.
    config : mapping, optional
        The ``analysis`` configuration section (keys of :data:`DEFAULTS`).

    Returns
    -------
    AnalysisResult
    """
    cfg = _merged(config)
    by = list(cfg["activity_by"])
    neg = cfg["negcon_role"]
    _require(profiles, by + [ROLE], "profiles")
    trt = profiles[(profiles[ROLE] != neg) & (profiles[ROLE] != "empty")]
    if len(by) > 1 and len(trt) and (trt.groupby(by, dropna=False).size() >= 2).mean() < 0.5:
        # e.g. one well per compound x dose (dose series without replicates): replicates of
        # a compound are then its wells at all doses
        logger.warning(
            "most treatments %s have a single well; measuring activity per %s", by, by[:-1]
        )
        by = by[:-1]
    compound = by[0]
    dose = DOSE if DOSE in consensus.columns and DOSE in profiles.columns else None
    in_profiles = set(feature_columns(profiles))
    feats = [c for c in feature_columns(consensus) if c in in_profiles]
    activity = phenotypic_activity(
        profiles,
        group_by=by,
        negcon=neg,
        negcon_same_plate=cfg["negcon_same_plate"],
        distance=cfg["distance"],
        q_threshold=cfg["q_threshold"],
        fdr=cfg["fdr"],
        null_size=cfg["null_size"],
        seed=cfg["seed"],
        features=feats,
        pvalue=cfg["pvalue"],
    )

    cons = consensus.reset_index(drop=True)
    if ROLE in cons.columns:
        cons = cons[cons[ROLE] != neg].reset_index(drop=True)
    _require(cons, by, "consensus")
    act_keys = activity[by + ["active", "q_value", "mean_average_precision"]]
    key_cons = cons[by].astype("string").fillna("<NA>")
    key_act = act_keys[by].astype("string").fillna("<NA>")
    lookup = {tuple(r): i for i, r in enumerate(key_act.itertuples(index=False))}
    idx = np.array([lookup.get(tuple(r), -1) for r in key_cons.itertuples(index=False)])
    active = np.where(idx >= 0, act_keys["active"].to_numpy()[np.maximum(idx, 0)], False)
    active = active.astype(bool)

    has_moa = MOA in cons.columns and cons[MOA].notna().any()
    moa_set = cons[active] if cfg["moa_active_only"] else cons
    if has_moa:
        consistency = moa_consistency(
            moa_set,
            compound_column=compound,
            distance=cfg["distance"],
            q_threshold=cfg["q_threshold"],
            null_size=cfg["null_size"],
            seed=cfg["seed"],
            features=feats,
        )
        nsc = nsc_accuracy(
            moa_set, compound_column=compound, distance=cfg["distance"], features=feats
        )
        per_moa = nsc.predictions.groupby(MOA)["correct"].mean().rename("nsc_accuracy")
        if len(per_moa):
            consistency = consistency.join(per_moa, on=MOA)
        else:  # no treatment to compare (e.g. none called active)
            consistency = consistency.assign(nsc_accuracy=np.nan)
    else:
        consistency = moa_consistency(
            cons.assign(**{MOA: pd.Series([None] * len(cons), dtype="object")}),
            compound_column=compound,
            features=feats,
        )
        consistency["nsc_accuracy"] = pd.Series(dtype="float64")
        nsc = NSCResult(float("nan"), float("nan"), pd.DataFrame())

    emb = embed_umap(cons, cfg["seed"], features=feats, **cfg["umap"])
    ccfg = dict(cfg["cluster"])
    space = ccfg.pop("space")
    active_only = ccfg.pop("active_only")
    method = ccfg.pop("method")
    if space not in ("umap", "features"):
        raise ValueError(f"analysis.cluster.space must be 'umap' or 'features', got {space!r}")
    sel = active if active_only else np.ones(len(cons), dtype=bool)
    xs = emb.to_numpy() if space == "umap" else _features(cons, feats, "cluster")
    labels = np.full(len(cons), -1, dtype=np.int64)
    if sel.any():
        metric = "euclidean" if space == "umap" else cfg["distance"]
        if method == "hdbscan":
            if space == "features":
                # cosine geometry for HDBSCAN: Euclidean distance between unit vectors
                norm = np.linalg.norm(xs, axis=1, keepdims=True)
                xs = xs / np.where(norm > 0, norm, 1.0)
            labels[sel] = cluster(
                xs[sel],
                "hdbscan",
                min_cluster_size=ccfg["min_cluster_size"],
                min_samples=ccfg["min_samples"],
            )
        else:
            labels[sel] = cluster(
                xs[sel],
                "hierarchical",
                n_clusters=ccfg["n_clusters"],
                distance_threshold=ccfg["distance_threshold"],
                linkage=ccfg["linkage"],
                metric="euclidean" if ccfg["linkage"] == "ward" else metric,
            )
    meta_cols = [c for c in cons.columns if str(c).startswith("Metadata_")]
    clusters = cons[meta_cols].copy()
    clusters["Metadata_Active"] = active
    clusters["UMAP_1"] = emb["UMAP_1"].to_numpy()
    clusters["UMAP_2"] = emb["UMAP_2"].to_numpy()
    clusters["Metadata_Cluster"] = labels
    nn = nearest_neighbors(
        cons,
        cfg["n_neighbors"],
        compound_column=compound,
        dose_column=dose,
        distance=cfg["distance"],
        features=feats,
    )
    clusters = pd.concat([clusters, nn.reset_index(drop=True)], axis=1)

    dr = (
        dose_response(
            activity, compound_column=compound, dose_column=dose, q_threshold=cfg["q_threshold"]
        )
        if dose is not None and dose in by
        else pd.DataFrame({compound: pd.Series(dtype="object")})
    )
    summary = {
        "activity_by": by,
        "n_treatments": int(len(activity)),
        "n_active": int(activity["active"].sum()),
        "n_active_compounds": int(dr["compound_active"].sum())
        if "compound_active" in dr.columns
        else None,
        "nsc_accuracy": nsc.accuracy,
        "nscb_accuracy": nsc.accuracy_nscb,
        "n_clusters": int(len(np.unique(labels[labels >= 0]))),
        "n_features": len(feats),
    }
    return AnalysisResult(activity, consistency, clusters, dr, summary)


def analyze_files(
    profiles_path: str,
    consensus_path: str,
    outputs: Mapping[str, str],
    config: Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Run :func:`run_analysis` on Parquet files and write its tables with provenance.

    Parameters
    ----------
    profiles_path, consensus_path : str
        Well-level campaign profiles and consensus profiles (Parquet).
    outputs : mapping
        Paths for the keys ``activity``, ``consistency``, ``clusters`` and ``dose_response``.
    config : mapping, optional
        The ``analysis`` configuration section.
    """
    from hcsflow.io import file_checksum, make_provenance, read_table, write_table

    missing = {"activity", "consistency", "clusters", "dose_response"} - set(outputs)
    if missing:
        raise ValueError(f"analyze_files: output path(s) missing for {sorted(missing)}")
    result = run_analysis(read_table(profiles_path), read_table(consensus_path), config)
    inputs = {"profiles": file_checksum(profiles_path), "consensus": file_checksum(consensus_path)}
    summary = {
        k: (None if isinstance(v, float) and not np.isfinite(v) else v)
        for k, v in result.summary.items()
    }
    for key in ("activity", "consistency", "clusters", "dose_response"):
        prov = make_provenance(
            f"analysis.{key}", dict(config or {}), inputs, extra={"summary": summary}
        )
        write_table(getattr(result, key), outputs[key], prov)
    return result
