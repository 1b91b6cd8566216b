"""Compound-level activity and dose response from the per-dose activity table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hcsflow.analysis._common import _bh, _require
from hcsflow.profiling.columns import COMPOUND, DOSE, MOA, ROLE


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
