"""Per-well spread and quantiles of single-cell features, beside the well median.

A well median says where the typical cell of a well lies; a treatment that changes only a
subpopulation (cells arrested in mitosis, a fraction of dying cells) or makes cells more
heterogeneous moves the median little and the spread or the tails a lot. Whether that adds to
the median depends on the screen: here it is an option (``profiles.dispersion``), measured
against well medians in ``benchmarks/analysis.py`` (docs/analysis.md).

Statistics (each per feature and well, NaN values skipped):

- ``mad``: median absolute deviation from the median (unscaled);
- ``iqr``: interquartile range, ``q75 - q25``;
- ``std``: standard deviation (``ddof=1``);
- ``qNN``: the NN-th percentile (``q10``, ``q25``, ``q90``, ...; 1-99), linearly interpolated
  between order statistics as :func:`numpy.quantile` does by default.

Each becomes a feature named ``<feature>__<statistic>`` (e.g. ``Cells_AreaShape_Area__mad``),
so that the later stages (normalization, feature selection, consensus) treat it as any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numba
import numpy as np

#: Separator between a feature's name and the statistic of a dispersion feature.
SUFFIX_SEPARATOR = "__"

_QUANTILE = re.compile(r"q([1-9][0-9]?)")

# codes of the statistics inside the kernel; quantiles are coded as their fraction (0, 1)
_MAD, _IQR, _STD = -1.0, -2.0, -3.0


def parse_statistics(statistics: Sequence[str]) -> np.ndarray:
    """Kernel codes of dispersion statistic names (see the module docstring).

    Parameters
    ----------
    statistics : sequence of str
        Names such as ``"mad"``, ``"iqr"``, ``"std"``, ``"q10"``, ``"q90"``.

    Returns
    -------
    ndarray of shape (n_statistics,), float64
        Quantile fraction in (0, 1), or a negative code for ``mad``, ``iqr`` and ``std``.

    Raises
    ------
    ValueError
        On an unknown or repeated name.
    """
    codes = []
    for name in statistics:
        m = _QUANTILE.fullmatch(name)
        if m:
            codes.append(int(m.group(1)) / 100.0)
        elif name in ("mad", "iqr", "std"):
            codes.append({"mad": _MAD, "iqr": _IQR, "std": _STD}[name])
        else:
            raise ValueError(
                f"unknown dispersion statistic {name!r} (config profiles.dispersion): "
                "expected mad, iqr, std or qNN with NN in 1..99"
            )
    if len(set(statistics)) != len(statistics):
        raise ValueError(f"dispersion statistics repeated: {list(statistics)}")
    return np.asarray(codes, dtype=np.float64)


def dispersion_feature_names(features: Sequence[str], statistics: Sequence[str]) -> list[str]:
    """Column names of the dispersion features, statistic-major (all features of the first
    statistic, then the second, ...), the order of :func:`group_dispersion`'s output."""
    return [f"{f}{SUFFIX_SEPARATOR}{s}" for s in statistics for f in features]


@numba.njit(cache=True, nogil=True)
def _quantile_sorted(x, n, q):  # pragma: no cover - compiled
    """q-quantile of the sorted x[:n] (linear interpolation, numpy's default)."""
    h = (n - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, n - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


@numba.njit(cache=True, nogil=True)
def _mad_sorted(x, n, dev):  # pragma: no cover - compiled
    """Median of |x - median(x)| of the sorted x[:n], without a second sort: the deviations
    below the median, read downwards, and those above it, read upwards, are both ascending,
    so one merge (into dev) orders them."""
    med = _quantile_sorted(x, n, 0.5)
    j = 0
    while j < n and x[j] < med:
        j += 1
    lo = j - 1  # deviations med - x[lo], med - x[lo - 1], ... ascending
    hi = j  # deviations x[hi] - med, x[hi + 1] - med, ... ascending
    for k in range(n):
        if hi >= n or (lo >= 0 and med - x[lo] <= x[hi] - med):
            dev[k] = med - x[lo]
            lo -= 1
        else:
            dev[k] = x[hi] - med
            hi += 1
    return _quantile_sorted(dev, n, 0.5)


@numba.njit(cache=True, nogil=True)
def _column_dispersion(col, order, bounds, codes, out):  # pragma: no cover - compiled
    """Statistics of one feature column per group into out (n_statistics, n_groups)."""
    n_groups = bounds.shape[0] - 1
    buf = np.empty(max(1, int(np.max(bounds[1:] - bounds[:-1]))), dtype=np.float64)
    dev = np.empty_like(buf)
    for g in range(n_groups):
        n = 0
        for i in range(bounds[g], bounds[g + 1]):
            v = col[order[i]]
            if not np.isnan(v):
                buf[n] = v
                n += 1
        if n == 0:
            out[:, g] = np.nan
            continue
        x = np.sort(buf[:n])
        for s in range(codes.shape[0]):
            c = codes[s]
            if c > 0.0:
                out[s, g] = _quantile_sorted(x, n, c)
            elif c == -2.0:
                out[s, g] = _quantile_sorted(x, n, 0.75) - _quantile_sorted(x, n, 0.25)
            elif c == -1.0:
                out[s, g] = _mad_sorted(x, n, dev)
            else:
                if n < 2:
                    out[s, g] = np.nan
                else:
                    mean = 0.0
                    for i in range(n):
                        mean += x[i]
                    mean /= n
                    ss = 0.0
                    for i in range(n):
                        ss += (x[i] - mean) ** 2
                    out[s, g] = np.sqrt(ss / (n - 1))


def group_dispersion(
    columns: Sequence[np.ndarray],
    order: np.ndarray,
    bounds: np.ndarray,
    statistics: Sequence[str],
) -> np.ndarray:
    """Dispersion statistics of each feature within each group of rows.

    Parameters
    ----------
    columns : sequence of ndarray of shape (n_rows,)
        One float array per feature (float32 or float64); NaN values are skipped.
    order : ndarray of shape (n_rows,), int
        Row order that makes the groups contiguous.
    bounds : ndarray of shape (n_groups + 1,), int
        Start of each group in ``order``, then the end.
    statistics : sequence of str
        Statistic names (:func:`parse_statistics`).

    Returns
    -------
    ndarray of shape (n_groups, n_statistics * n_features), float64
        Statistic-major columns, as named by :func:`dispersion_feature_names`; NaN where a
        group has no value of a feature (or one value, for ``std``).
    """
    codes = parse_statistics(statistics)
    n_groups = len(bounds) - 1
    n_feat = len(columns)
    out = np.empty((len(codes), n_feat, n_groups), dtype=np.float64)
    order = np.ascontiguousarray(order, dtype=np.int64)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    for j, col in enumerate(columns):
        _column_dispersion(np.asarray(col), order, bounds, codes, out[:, j, :])
    return out.reshape(len(codes) * n_feat, n_groups).T
