"""Compiled kernels for per-group statistics of feature matrices (numba).

The median of each feature within each group (the cells of a well, the wells of a treatment)
is the costliest step of profiling. numpy's ``median``/``partition`` on many small strided
slices costs tens of nanoseconds per value. Here the middle order statistics are found by a
sampling selection: two bracketing values are read off a small evenly spaced sample, one
branch-free pass keeps the values between them (and counts those below), and a quickselect
finishes on that short remainder (falling back to the whole group if the bracket missed).
When a group's rows are consecutive (the usual case) the pass reads them in place; otherwise
they are first gathered into a buffer, NaN skipped. The final selection partitions out of
place (below the pivot to the front of a second buffer, above it to its back), so that its
stores depend only on counters and not on the previous iteration's store. The results are
exact: equal to ``numpy.nanmedian`` (mean of the two middle values for an even count).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

_SMALL = 16
_SAMPLE = 64
_MARGIN = 10


@numba.njit(cache=True, nogil=True)
def _median_of_three(a, b, c):  # pragma: no cover - compiled
    """The middle value of a, b and c (the pivot of the selections below)."""
    if a > b:
        a, b = b, a
    if b > c:
        b, c = c, b
    if a > b:
        a, b = b, a
    return b


@numba.njit(cache=True, nogil=True)
def _insertion_sort(buf, lo, hi):  # pragma: no cover - compiled
    """Sort buf[lo:hi] in place (the last step of a selection, on at most _SMALL values)."""
    for i in range(lo + 1, hi):
        v = buf[i]
        j = i - 1
        while j >= lo and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v


@numba.njit(cache=True, nogil=True)
def _select(buf, lo, hi, k):  # pragma: no cover - compiled
    """k-th smallest of buf[lo:hi] (k absolute), rearranging buf[lo:hi] in place.

    Three-way quickselect with median-of-three pivots and branch-free partitions: values below
    the pivot, then values equal to it, so that runs of equal values end the search at once.
    """
    while hi - lo > _SMALL:
        pivot = _median_of_three(buf[lo], buf[(lo + hi) >> 1], buf[hi - 1])
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
    _insertion_sort(buf, lo, hi)
    return buf[k]


@numba.njit(cache=True, nogil=True)
def _select_oop(src0, a, b, n, k):  # pragma: no cover - compiled
    """k-th smallest of src0[:n], which is left unchanged; a and b (longer than n) are scratch.

    Out-of-place three-way partitions: values below the pivot are written to the front of the
    other buffer, values above it to its back, values equal to it only counted. The stores
    depend on counters only, so that an iteration does not wait on the previous one's store
    (as an in-place swap partition does); the buffers alternate between passes.
    """
    src = src0
    dst = a
    spare = b
    lo = 0
    if n <= _SMALL:
        for i in range(n):
            a[i] = src0[i]
        src = a
    while n > _SMALL:
        pivot = _median_of_three(src[lo], src[lo + (n >> 1)], src[lo + n - 1])
        nl = 0
        ng = 0
        for i in range(lo, lo + n):
            v = src[i]
            dst[nl] = v
            nl += v < pivot
            dst[n - ng] = v
            ng += v > pivot
        if k < nl:
            n = nl
            lo = 0
        elif k < n - ng:
            return pivot
        else:
            k -= n - ng
            lo = n - ng + 1
            n = ng
        src, dst, spare = dst, spare, dst
        if n <= _SMALL:
            break
    _insertion_sort(src, lo, lo + n)
    return src[lo + k]


@numba.njit(cache=True, nogil=True)
def _bracket(sample, n, lo_rank):  # pragma: no cover - compiled
    """Bounds around the lo_rank-th of n values, read off an evenly spaced sample of them.

    ``sample`` holds ``_SAMPLE`` values and is rearranged; an open side is +-inf.
    """
    q = lo_rank * _SAMPLE // n
    a = q - _MARGIN
    b = q + _MARGIN + 1
    low = -np.inf
    high = np.inf
    first = 0
    if a >= 0:
        low = _select(sample, 0, _SAMPLE, a)
        first = a + 1  # the selection left sample[a + 1:] >= low: search only there
    if b < _SAMPLE:
        high = _select(sample, first, _SAMPLE, b)
    return low, high


@numba.njit(cache=True, nogil=True)
def _select_pair(buf, n, k, even):  # pragma: no cover - compiled
    """The k-th smallest of buf[:n] and, if ``even``, the (k-1)-th (else the k-th again).

    buf is rearranged: the selection leaves the k smallest values in buf[:k], so the (k-1)-th
    is the largest of them.
    """
    hi_v = _select(buf, 0, n, k)
    if not even:
        return hi_v, hi_v
    lo_v = buf[0]
    for r in range(1, k):
        if buf[r] > lo_v:
            lo_v = buf[r]
    return hi_v, lo_v


@numba.njit(cache=True, nogil=True)
def _kth_pair(buf, n, k, even, sample):  # pragma: no cover - compiled
    """The k-th smallest of buf[:n] and, if ``even``, the (k-1)-th; buf is rearranged.

    Returns (k-th, (k-1)-th or k-th) and False if the bracket missed (buf is then unusable).
    """
    lo_rank = k - 1 if even else k
    if n <= 4 * _SAMPLE:
        hi_v, lo_v = _select_pair(buf, n, k, even)
        return hi_v, lo_v, True
    # bracket from an evenly spaced sample
    step = n / _SAMPLE
    for i in range(_SAMPLE):
        sample[i] = buf[int(i * step)]
    low, high = _bracket(sample, n, lo_rank)
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
    hi_v, lo_v = _select_pair(buf, m, k - below, even)
    return hi_v, lo_v, True


@numba.njit(cache=True, nogil=True)
def _fill(buf, x, order, s, e):  # pragma: no cover - compiled
    """Copy the non-NaN values of x over rows order[s:e] to buf; return their count."""
    n = 0
    for r in range(s, e):
        v = np.float64(x[order[r]])
        buf[n] = v
        n += not np.isnan(v)
    return n


@numba.njit(cache=True, nogil=True)
def _median_exact(buf, n, sample):  # pragma: no cover - compiled
    """Median of buf[:n] (no NaN), rearranging buf; NaN if n == 0."""
    if n == 0:
        return np.nan
    k = n // 2
    even = n % 2 == 0
    hi_v, lo_v, ok = _kth_pair(buf, n, k, even, sample)
    if not ok:
        return np.nan  # not reached: the caller refills buf and retries without a bracket
    return (hi_v + lo_v) / 2.0 if even else hi_v


@numba.njit(cache=True, nogil=True)
def _median_run(x, s, e, buf, sample, scratch, scratch2):  # pragma: no cover - compiled
    """Median of the contiguous rows x[s:e] without NaN, in one pass over them.

    The bracket is read off an evenly spaced sample of x[s:e] itself and the same pass that
    keeps the values inside it counts NaN; returns (median, True), or (0, False) when a value
    is NaN or the bracket missed (the caller then takes the general path).
    """
    n = e - s
    step = n / _SAMPLE
    for i in range(_SAMPLE):
        v = np.float64(x[s + int(i * step)])
        if np.isnan(v):
            return 0.0, False
        sample[i] = v
    k = n // 2
    even = n % 2 == 0
    lo_rank = k - 1 if even else k
    low, high = _bracket(sample, n, lo_rank)
    below = 0
    m = 0
    nan = 0
    for r in range(s, e):
        v = np.float64(x[r])
        below += v < low
        nan += v != v
        buf[m] = v
        m += (v >= low) & (v <= high)
    if nan > 0 or not (below <= lo_rank and k < below + m):
        return 0.0, False
    hi_v = _select_oop(buf, scratch, scratch2, m, k - below)
    if not even:
        return hi_v, True
    # the (k-1)-th: hi_v again if fewer than k values lie below it, else the largest below it
    n_less = below
    lo_v = -np.inf
    for i in range(m):
        v = buf[i]
        less = v < hi_v
        n_less += less
        lo_v = max(lo_v, v) if less else lo_v
    if n_less < k:
        lo_v = hi_v
    return (hi_v + lo_v) / 2.0, True


@numba.njit(cache=True, nogil=True)
def _median_column(x, order, bounds, out):  # pragma: no cover - compiled
    """out[g] = median of x[order[bounds[g]:bounds[g + 1]]], NaN skipped."""
    n_groups = bounds.shape[0] - 1
    max_n = 1
    for g in range(n_groups):
        max_n = max(max_n, bounds[g + 1] - bounds[g])
    buf = np.empty(max_n, dtype=np.float64)
    scratch = np.empty(max_n + 1, dtype=np.float64)
    scratch2 = np.empty(max_n + 1, dtype=np.float64)
    sample = np.empty(_SAMPLE, dtype=np.float64)
    for g in range(n_groups):
        s = bounds[g]
        e = bounds[g + 1]
        if e - s > 4 * _SAMPLE and order[s] == s and order[e - 1] == e - 1:
            # order increases within a group (stable argsort), so this group is the run of
            # rows s .. e - 1 (the usual case: rows already grouped in order)
            med, ok = _median_run(x, s, e, buf, sample, scratch, scratch2)
            if ok:
                out[g] = med
                continue
        n = _fill(buf, x, order, s, e)
        k = n // 2
        even = n % 2 == 0
        med = _median_exact(buf, n, sample)
        if n > 0 and np.isnan(med):
            # the sample bracket missed: plain selection on the whole group
            n = _fill(buf, x, order, s, e)
            hi_v, lo_v = _select_pair(buf, n, k, even)
            med = (hi_v + lo_v) / 2.0 if even else hi_v
        out[g] = med


def group_median_columns(
    columns: Sequence[np.ndarray], order: np.ndarray, bounds: np.ndarray, threads: int = 1
) -> np.ndarray:
    """Median of each feature column over the rows of each group, NaN skipped.

    Parameters
    ----------
    columns : sequence of ndarray of shape (n_rows,)
        One array per feature (float32 or float64, any stride; contiguous is fastest). Read
        only, so read-only views (e.g. of Arrow buffers) are fine.
    order : ndarray of shape (n_rows,), int64
        Row order that makes groups contiguous, increasing within each group (a stable
        argsort of the group codes).
    bounds : ndarray of shape (n_groups + 1,), int64
        Group g occupies ``order[bounds[g]:bounds[g + 1]]``.
    threads : int
        Features are split over this many threads (results do not depend on it).

    Returns
    -------
    ndarray of shape (n_features, n_groups), float64
        Row j holds the medians of ``columns[j]``; use its transpose for groups as rows.
    """
    n_groups = bounds.shape[0] - 1
    out = np.empty((len(columns), n_groups), dtype=np.float64)
    order = np.ascontiguousarray(order, dtype=np.int64)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)

    def run(j0: int, j1: int) -> None:
        for j in range(j0, j1):
            _median_column(columns[j], order, bounds, out[j])

    if threads <= 1 or len(columns) < 2:
        run(0, len(columns))
        return out
    from concurrent.futures import ThreadPoolExecutor

    edges = np.linspace(0, len(columns), min(threads, len(columns)) + 1).astype(np.int64)
    with ThreadPoolExecutor(len(edges) - 1) as pool:
        jobs = [
            pool.submit(run, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        for job in jobs:
            job.result()
    return out


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
        Features are split over this many threads (results do not depend on it).

    Returns
    -------
    ndarray of shape (n_groups, n_features), float64
    """
    return group_median_columns(list(xt), order, bounds, threads=threads).T
