"""Plate-position effects of well profiles: row and column offsets fitted per plate.

Screens show systematic differences between wells by position: edge wells dry faster and
grow fewer cells, dispensers and readers leave row or column gradients. Such offsets are
additive on normalized profiles (robust z-scores), so they are modelled per plate and feature
as ``x[r, c] = m + row[r] + col[c] + e`` and the fitted ``row[r] + col[c]`` is subtracted
from every well of the plate, controls and treatments alike.

Two fits are offered:

- ``all``: Tukey's median polish over every well of the plate (the two-way fit of the B-score,
  Brideau et al. 2003). It is robust to the minority of wells that carry a treatment effect,
  and needs no controls, but assumes that most wells of a row or column are near inactive.
- ``negcon``: least squares on the negative-control wells only (backfitting of the additive
  model, each offset shrunk toward zero by ``shrinkage`` pseudo-wells), for plates where most
  wells are active. It needs controls spread over the rows and columns; a row or column
  without any control keeps a zero offset.

A layout shared by replicate plates puts each treatment at the same position on every plate,
so a position effect does not average out over replicates: it biases the treatment's
consensus. That is the case this correction is for.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.wells import well_index

#: Fits accepted by :func:`correct_position` (configuration key ``campaign.position.fit_on``).
FIT_ON = ("all", "negcon")


@dataclass(frozen=True)
class PositionGrid:
    """Row and column index of each well of a table, and the grid's size.

    Attributes
    ----------
    rows, cols : ndarray of int, shape (n_wells,)
        Zero-based row and column of each well, numbered over the rows and columns present.
    n_rows, n_cols : int
    """

    rows: np.ndarray
    cols: np.ndarray
    n_rows: int
    n_cols: int


def position_grid(wells: Sequence[str]) -> PositionGrid:
    """Row and column indices of ``wells`` (``A01``, ``A1``, ``AA12``, ...).

    Raises ``ValueError`` naming the first well that is not a row letter and column number.
    """
    letters, numbers = [], []
    for well in wells:
        try:
            r, c = well_index(well)
        except ValueError:
            raise ValueError(
                f"plate-position correction: well {well!r} is not a row letter and column "
                "number (e.g. B07)"
            ) from None
        letters.append(r)
        numbers.append(c)
    row_names = sorted(set(letters))
    col_names = sorted(set(numbers))
    row_index = {r: i for i, r in enumerate(row_names)}
    col_index = {c: i for i, c in enumerate(col_names)}
    return PositionGrid(
        rows=np.array([row_index[r] for r in letters], dtype=np.int64),
        cols=np.array([col_index[c] for c in numbers], dtype=np.int64),
        n_rows=len(row_names),
        n_cols=len(col_names),
    )


def median_polish(
    x: np.ndarray, rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int, n_iter: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column effects of Tukey's median polish, for many features at once.

    Parameters
    ----------
    x : ndarray of shape (n_wells, n_features)
        Values of the wells of one plate; NaN is ignored.
    rows, cols : ndarray of int, shape (n_wells,)
        Row and column index of each well.
    n_rows, n_cols : int
    n_iter : int
        Sweeps of row then column medians (the fit converges within a few).

    Returns
    -------
    row_effect : ndarray of shape (n_rows, n_features)
    col_effect : ndarray of shape (n_cols, n_features)
        Centred so that their medians are zero (the overall level is not returned). An empty
        row or column gets a zero effect.
    """
    n_feat = x.shape[1]
    grid = np.full((n_rows, n_cols, n_feat), np.nan)
    grid[rows, cols] = x
    row_eff = np.zeros((n_rows, n_feat))
    col_eff = np.zeros((n_cols, n_feat))
    resid = grid.copy()
    for _ in range(n_iter):
        r = _nanmedian0(resid, axis=1)  # (n_rows, n_feat)
        resid -= r[:, None, :]
        row_eff += r
        c = _nanmedian0(resid, axis=0)  # (n_cols, n_feat)
        resid -= c[None, :, :]
        col_eff += c
    row_eff -= _nanmedian0(row_eff, axis=0)[None, :]
    col_eff -= _nanmedian0(col_eff, axis=0)[None, :]
    return row_eff, col_eff


def additive_fit(
    x: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    n_rows: int,
    n_cols: int,
    shrinkage: float = 1.0,
    n_iter: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column effects of an additive model fitted by shrunk least squares.

    Backfitting of ``x = m + row[r] + col[c] + e`` over the given wells; each offset is the
    sum of its wells' residuals divided by (their number + ``shrinkage``), which pulls rows and
    columns with few wells toward zero.

    Parameters
    ----------
    x : ndarray of shape (n_wells, n_features)
        Values of the fitting wells (e.g. the negative controls of one plate); no NaN.
    rows, cols : ndarray of int, shape (n_wells,)
    n_rows, n_cols : int
    shrinkage : float
        Pseudo-wells of value zero added to every row and column.
    n_iter : int

    Returns
    -------
    row_effect : ndarray of shape (n_rows, n_features)
    col_effect : ndarray of shape (n_cols, n_features)
        Rows or columns without fitting wells get zero.
    """
    n_feat = x.shape[1]
    centred = x - x.mean(axis=0, keepdims=True)
    row_n = np.bincount(rows, minlength=n_rows).astype(np.float64)[:, None]
    col_n = np.bincount(cols, minlength=n_cols).astype(np.float64)[:, None]
    row_eff = np.zeros((n_rows, n_feat))
    col_eff = np.zeros((n_cols, n_feat))
    # rows or columns without fitting wells (and no shrinkage) keep a zero offset
    row_w = np.divide(1.0, row_n + shrinkage, out=np.zeros_like(row_n), where=row_n > 0)
    col_w = np.divide(1.0, col_n + shrinkage, out=np.zeros_like(col_n), where=col_n > 0)
    for _ in range(n_iter):
        row_eff = _group_sum(centred - col_eff[cols], rows, n_rows) * row_w
        col_eff = _group_sum(centred - row_eff[rows], cols, n_cols) * col_w
    return row_eff, col_eff


def correct_position(
    profiles: pd.DataFrame,
    features: Sequence[str],
    *,
    fit_on: str = "all",
    control: dict[str, Any] | None = None,
    shrinkage: float = 1.0,
    plate_col: str = "Metadata_Plate",
    well_col: str = "Metadata_Well",
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Subtract each plate's fitted row and column offsets from its well profiles.

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
        Normalized well profiles with ``plate_col`` and ``well_col``.
    features : sequence of str
        Feature columns to correct; other columns are returned unchanged.
    fit_on : {"all", "negcon"}
        ``all``: median polish over every well; ``negcon``: shrunk least squares on the wells
        matching ``control``.
    control : dict, optional
        Column -> value of the control wells (e.g. ``{"Metadata_Role": "negcon"}``); required
        for ``fit_on="negcon"``.
    shrinkage : float
        Pseudo-wells per row and column of the ``negcon`` fit.
    plate_col, well_col : str

    Returns
    -------
    profiles : DataFrame
        Same rows, order and columns; the features corrected (float64).
    info : dict
        ``fit_on`` and, per plate, the spread (root mean square over features) of the removed
        row and column effects, for provenance.
    """
    if fit_on not in FIT_ON:
        raise ValueError(f"campaign.position.fit_on must be one of {FIT_ON}, got {fit_on!r}")
    missing = [c for c in (plate_col, well_col) if c not in profiles.columns]
    if missing:
        raise ValueError(f"plate-position correction needs the column(s) {missing}")
    if fit_on == "negcon" and not control:
        raise ValueError("plate-position correction with fit_on: negcon needs control wells")
    feats = list(features)
    out = profiles.copy()
    values = out[feats].to_numpy(dtype=np.float64, copy=True)
    per_plate: dict[str, dict[str, float]] = {}
    for plate, idx in out.groupby(plate_col, sort=True).indices.items():
        grid = position_grid(out[well_col].iloc[idx].tolist())
        x = values[idx]
        if fit_on == "all":
            row_eff, col_eff = median_polish(x, grid.rows, grid.cols, grid.n_rows, grid.n_cols)
        else:
            sel = np.ones(len(idx), dtype=bool)
            for col, val in control.items():  # type: ignore[union-attr]
                sel &= out[col].iloc[idx].to_numpy() == val
            fit = x[sel]
            ok = ~np.isnan(fit).any(axis=1)
            if ok.sum() < 2:
                raise ValueError(
                    f"plate {plate}: plate-position correction with fit_on: negcon needs at "
                    f"least 2 complete control wells, found {int(ok.sum())}"
                )
            row_eff, col_eff = additive_fit(
                fit[ok],
                grid.rows[sel][ok],
                grid.cols[sel][ok],
                grid.n_rows,
                grid.n_cols,
                shrinkage=shrinkage,
            )
        values[idx] = x - row_eff[grid.rows] - col_eff[grid.cols]
        per_plate[str(plate)] = {
            "row_rms": float(np.sqrt(np.mean(row_eff**2))),
            "col_rms": float(np.sqrt(np.mean(col_eff**2))),
        }
    out[feats] = values
    return out, {"fit_on": fit_on, "plates": per_plate}


def _nanmedian0(a: np.ndarray, axis: int) -> np.ndarray:
    """``nanmedian`` along ``axis`` with all-NaN slices giving 0 (no warning)."""
    if not a.size:
        return np.zeros(a.shape[:axis] + a.shape[axis + 1 :])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: empty row or column
        med = np.nanmedian(a, axis=axis)
    return np.where(np.isnan(med), 0.0, med)


def _group_sum(x: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Sum of the rows of ``x`` (n, f) per group index (n,) -> (n_groups, f)."""
    out = np.zeros((n, x.shape[1]))
    np.add.at(out, groups, x)
    return out
