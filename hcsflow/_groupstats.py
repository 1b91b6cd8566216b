"""Compiled kernels for per-group statistics of feature matrices (numba).

The median of each feature within each group (the cells of a well, the wells of a treatment)
is the costliest step of profiling. numpy's ``median``/``partition`` on many small strided
slices costs tens of nanoseconds per value. Here one group's column is copied into a
contiguous buffer (NaN skipped) and the middle order statistics are found by a sampling
selection: two bracketing values are read off a small evenly spaced sample, one branch-free
pass keeps the values between them, and a branch-free three-way quickselect finishes on that
short remainder (falling back to the whole column if the bracket missed). The results are
exact: equal to ``numpy.nanmedian`` (mean of the two middle values for an even count).
"""

from __future__ import annotations

import numba
import numpy as np

_SMALL = 16
_SAMPLE = 64
_MARGIN = 10


@numba.njit(cache=True, nogil=True)
def _select(buf, lo, hi, k):  # pragma: no cover - compiled
    """k-th smallest of buf[lo:hi] (k absolute), rearranging buf[lo:hi] in place.

    Three-way quickselect with median-of-three pivots and branch-free partitions: values below
    the pivot, then values equal to it, so that runs of equal values end the search at once.
    """
    while hi - lo > _SMALL:
        a = buf[lo]
        b = buf[(lo + hi) >> 1]
        c = buf[hi - 1]
        if a > b:
            a, b = b, a
        if b > c:
            b, c = c, b
        if a > b:
            a, b = b, a
        pivot = b
        store = lo
        for i in range(lo, hi):
            v = buf[i]
            w = buf[store]
            less = v < pivot
            buf[i] = w if less else v
            buf[store] = v if less else w
            store += less
        if k < store:
            hi = store
            continue
        eq = store
        for i in range(store, hi):
            v = buf[i]
            w = buf[eq]
            same = v == pivot
            buf[i] = w if same else v
            buf[eq] = v if same else w
            eq += same
        if k < eq:
            return pivot
        lo = eq
    for i in range(lo + 1, hi):
        v = buf[i]
        j = i - 1
        while j >= lo and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    return buf[k]


@numba.njit(cache=True, nogil=True)
def _kth_pair(buf, n, k, even, sample):  # pragma: no cover - compiled
    """The k-th smallest of buf[:n] and, if ``even``, the (k-1)-th; buf is rearranged.

    Returns (k-th, (k-1)-th or k-th) and False if the bracket missed (buf is then unusable).
    """
    lo_rank = k - 1 if even else k
    if n <= 4 * _SAMPLE:
        hi_v = _select(buf, 0, n, k)
        if not even:
            return hi_v, hi_v, True
        lo_v = buf[0]
        for r in range(1, k):
            if buf[r] > lo_v:
                lo_v = buf[r]
        return hi_v, lo_v, True
    # bracket from an evenly spaced sample
    step = n / _SAMPLE
    for i in range(_SAMPLE):
        sample[i] = buf[int(i * step)]
    q = lo_rank * _SAMPLE // n
    a = q - _MARGIN
    b = q + _MARGIN + 1
    low = -np.inf
    high = np.inf
    if a >= 0:
        low = _select(sample, 0, _SAMPLE, a)
    if b < _SAMPLE:
        high = _select(sample, 0, _SAMPLE, b)
    below = 0
    m = 0
    for i in range(n):
        v = buf[i]
        below += v < low
        keep = (v >= low) & (v <= high)
        buf[m] = v
        m += keep
    if not (below <= lo_rank and k < below + m):
        return 0.0, 0.0, False
    hi_v = _select(buf, 0, m, k - below)
    if not even:
        return hi_v, hi_v, True
    lo_v = buf[0]
    for r in range(1, k - below):
        if buf[r] > lo_v:
            lo_v = buf[r]
    return hi_v, lo_v, True


@numba.njit(cache=True, nogil=True)
def _fill(buf, xt, j, order, s, e):  # pragma: no cover - compiled
    """Copy the non-NaN values of feature j over rows order[s:e] to buf; return their count."""
    n = 0
    if e <= s:
        return 0
    if order[s] == s and order[e - 1] == e - 1:
        # order increases within a group (stable argsort), so this group is rows s .. e - 1:
        # a straight contiguous read (the usual case: rows already grouped in order)
        for r in range(s, e):
            v = np.float64(xt[j, r])
            buf[n] = v
            n += not np.isnan(v)
        return n
    for r in range(s, e):
        v = np.float64(xt[j, order[r]])
        buf[n] = v
        n += not np.isnan(v)
    return n


@numba.njit(cache=True, nogil=True)
def _median_groups(xt, order, bounds, g0, g1, out):  # pragma: no cover - compiled
    p = xt.shape[0]
    max_n = 1
    for g in range(g0, g1):
        max_n = max(max_n, bounds[g + 1] - bounds[g])
    buf = np.empty(max_n, dtype=np.float64)
    sample = np.empty(_SAMPLE, dtype=np.float64)
    for g in range(g0, g1):
        s = bounds[g]
        e = bounds[g + 1]
        for j in range(p):
            n = _fill(buf, xt, j, order, s, e)
            if n == 0:
                out[g, j] = np.nan
                continue
            k = n // 2
            even = n % 2 == 0
            hi_v, lo_v, ok = _kth_pair(buf, n, k, even, sample)
            if not ok:
                n = _fill(buf, xt, j, order, s, e)
                hi_v = _select(buf, 0, n, k)
                lo_v = hi_v
                if even:
                    lo_v = buf[0]
                    for r in range(1, k):
                        if buf[r] > lo_v:
                            lo_v = buf[r]
            out[g, j] = (hi_v + lo_v) / 2.0 if even else hi_v


def group_median(
    xt: np.ndarray, order: np.ndarray, bounds: np.ndarray, threads: int = 1
) -> np.ndarray:
    """Median of each feature over the rows of each group, NaN skipped.

    Parameters
    ----------
    xt : ndarray of shape (n_features, n_rows)
        Features as rows (float32 or float64, any strides; contiguous rows are fastest).
    order : ndarray of shape (n_rows,), int64
        Row order that makes groups contiguous, increasing within each group (a stable
        argsort of the group codes).
    bounds : ndarray of shape (n_groups + 1,), int64
        Group g occupies ``order[bounds[g]:bounds[g + 1]]``.
    threads : int
        Groups are split over this many threads (results do not depend on it).

    Returns
    -------
    ndarray of shape (n_groups, n_features), float64
    """
    n_groups = bounds.shape[0] - 1
    out = np.empty((n_groups, xt.shape[0]), dtype=np.float64)
    order = np.ascontiguousarray(order, dtype=np.int64)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    if threads <= 1 or n_groups < 2:
        _median_groups(xt, order, bounds, 0, n_groups, out)
        return out
    from concurrent.futures import ThreadPoolExecutor

    edges = np.linspace(0, n_groups, min(threads, n_groups) + 1).astype(np.int64)
    with ThreadPoolExecutor(len(edges) - 1) as pool:
        jobs = [
            pool.submit(_median_groups, xt, order, bounds, int(a), int(b), out)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        for job in jobs:
            job.result()
    return out
