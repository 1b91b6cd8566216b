"""Phenotypic activity: mAP of each treatment's replicate wells against negative controls.

For each treatment well, the other wells of the same treatment (positives) and the
negative-control wells (negatives) are ranked by similarity to it; the treatment's mAP is
compared with a null distribution (:mod:`hcsflow.analysis.mapstats`) and the p-values are
FDR-corrected. :func:`phenotypic_activity` runs the named steps below in order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hcsflow.analysis._common import _bh, _check_distance, _features, _group_codes, _require
from hcsflow.analysis.mapstats import _map_with_pvalues, permutation_map_pvalues
from hcsflow.profiling.columns import COMPOUND, DOSE, MOA, NEGCON, PLATE, ROLE, WELL
from hcsflow.wells import well_index

logger = logging.getLogger(__name__)

#: Columns of the activity table after the ``group_by`` columns, MoA and role.
ACTIVITY_COLUMNS = (
    "n_replicates",
    "mean_average_precision",
    "p_value",
    "q_value",
    "active",
    "negcon_distance",
    "p_value_method",
)


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
    _check_activity_options(distance, fdr, pvalue, negcon_same_plate)
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
        pvalue = _choose_null(df, is_neg, group_by, negcon_same_plate)
    codes = np.where(is_neg, -1, _group_codes(df, group_by))
    maps = _activity_maps(
        df, x, codes, is_neg, pvalue, negcon_same_plate, plate_column, distance, null_size, seed
    )
    keep = [c for c in (MOA, role_column) if c in df.columns and c not in group_by]
    out, groups = _treatments(df, codes[~is_neg], ~is_neg, group_by + keep, maps)
    out["negcon_distance"] = _negcon_distance(x, is_neg, codes[~is_neg])
    q = _q_values(out, fdr, group_by)
    out["q_value"] = q
    out["active"] = np.nan_to_num(q, nan=1.0) < q_threshold
    out["p_value_method"] = pvalue
    if WELL in df.columns:
        adjacent = _adjacent(df, groups, plate_column).reindex(out.index)
        out["adjacent_wells"] = adjacent.fillna(False).astype(bool)
        _warn_adjacent(out)
    out = out.reset_index(drop=True)
    cols = group_by + keep + list(ACTIVITY_COLUMNS)
    cols += ["adjacent_wells"] if "adjacent_wells" in out.columns else []
    out = out[cols].sort_values(group_by, kind="stable").reset_index(drop=True)
    out["n_replicates"] = out["n_replicates"].astype("int64")
    return out


def _check_activity_options(distance: str, fdr: str, pvalue: str, negcon_same_plate: bool) -> None:
    """``ValueError`` for an unknown distance, FDR method or null, or a null that cannot apply."""
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


def _choose_null(
    df: pd.DataFrame, is_neg: np.ndarray, group_by: list[str], negcon_same_plate: bool
) -> str:
    """``pvalue="auto"``: the permutation null for treatments of 3+ wells, else copairs'."""
    wells = df.loc[~is_neg].groupby(group_by, dropna=False).size()
    many = len(wells) > 0 and float(wells.median()) >= 3
    return "permutation" if many and not negcon_same_plate else "copairs"


def _activity_maps(
    df: pd.DataFrame,
    x: np.ndarray,
    codes: np.ndarray,
    is_neg: np.ndarray,
    pvalue: str,
    negcon_same_plate: bool,
    plate_column: str,
    distance: str,
    null_size: int,
    seed: int,
) -> pd.DataFrame:
    """mAP and p-value per treatment code (columns ``group``, ``mean_average_precision``,
    ``p_value``) under the null ``pvalue`` (``"permutation"`` or ``"copairs"``)."""
    if pvalue == "permutation":
        strata = (
            df[plate_column].astype("string").fillna("<NA>").to_numpy()
            if plate_column in df.columns
            else None
        )
        return permutation_map_pvalues(
            x, codes, is_neg, strata=strata, distance=distance, null_size=null_size, seed=seed
        )[["group", "mean_average_precision", "p_value"]]
    meta = pd.DataFrame(
        {
            "group": codes,
            # negcon wells each get a unique reference so they are never positives of each other
            "ref": np.where(is_neg, np.arange(len(df)), -1),
            "negcon": is_neg,
        }
    )
    neg_sameby: list[str] = []
    if negcon_same_plate:
        meta["plate"] = df[plate_column].astype("string").fillna("<NA>").to_numpy()
        neg_sameby = ["plate"]
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
    return maps


def _treatments(
    df: pd.DataFrame, codes: np.ndarray, rows: np.ndarray, columns: list[str], maps: pd.DataFrame
) -> tuple[pd.DataFrame, dict]:
    """One row per treatment code: ``columns`` (first value), ``n_replicates`` and ``maps``.

    Also returns the wells (row labels of ``df``) of each treatment code.
    """
    trt = df.loc[rows, columns].copy()
    trt["_group"] = codes
    grouped = trt.groupby("_group", sort=True)
    out = grouped.agg({c: "first" for c in columns}).join(grouped.size().rename("n_replicates"))
    out = out.join(maps.set_index("group").rename_axis("_group"), how="left")
    return out, grouped.groups


def _negcon_distance(x: np.ndarray, is_neg: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Distance of each treatment's median profile to the median negcon well, in units of the
    median negcon well's distance to it (treatments in the order of their codes)."""
    neg_centre = np.median(x[is_neg], axis=0)
    neg_d = np.linalg.norm(x[is_neg] - neg_centre, axis=1)
    scale = float(np.median(neg_d)) or 1.0
    med = pd.DataFrame(x[~is_neg]).groupby(codes, sort=True).median().to_numpy()
    return np.linalg.norm(med - neg_centre, axis=1) / scale


def _q_values(out: pd.DataFrame, fdr: str, group_by: list[str]) -> np.ndarray:
    """q-values of the treatments' p-values: BH over all, or hierarchical (compound, dose)."""
    p = out["p_value"].to_numpy(dtype=np.float64)
    if fdr == "bh":
        return _bh(p)
    if len(group_by) < 2:
        raise ValueError("fdr='hierarchical' needs group_by with compound and dose columns")
    return _hierarchical_q(out, group_by[:-1], p)


def _adjacent(df: pd.DataFrame, groups: dict, plate_column: str) -> pd.Series:
    """:func:`adjacent_wells` of each treatment code (``groups``: code -> rows of ``df``)."""
    plates = df[plate_column].astype("string") if plate_column in df.columns else None
    adjacent = {}
    for code, rows in groups.items():
        wl = df.loc[rows, WELL].astype(str).tolist()
        adjacent[code] = adjacent_wells(wl, None if plates is None else plates.loc[rows].tolist())
    return pd.Series(adjacent)


def _warn_adjacent(out: pd.DataFrame) -> None:
    """Warn when most treatments with replicates sit side by side on a plate."""
    n_multi = int((out["n_replicates"] >= 2).sum())
    n_adj = int(out["adjacent_wells"].sum())
    if n_multi and n_adj > n_multi / 2:
        logger.warning(
            "the wells of %d of %d treatments sit side by side on one plate: their "
            "activity cannot be told from a position effect (see adjacent_wells)",
            n_adj,
            n_multi,
        )


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
    if len(wells) < 2 or (plates is not None and len(set(plates)) > 1):
        return False
    try:
        rc = [well_index(w) for w in wells]
    except ValueError:
        return False
    rows = [r for r, _ in rc]
    cols = [c for _, c in rc]
    if len(set(rows)) == 1:
        return _consecutive(cols)
    return len(set(cols)) == 1 and _consecutive(rows)


def _consecutive(values: list[int]) -> bool:
    """Whether the integers are distinct and fill a range without a gap."""
    v = sorted(values)
    return v == list(range(v[0], v[0] + len(v)))
