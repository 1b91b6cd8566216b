"""Radial intensity distribution per object (CellProfiler 4 MeasureObjectIntensityDistribution).

Method
------
CellProfiler's definitions with its defaults (scaled bins, ``bin_count`` rings, centre = the
object itself, no Zernike moments), for each object:

* **Distance to the edge** ``d_e``: Euclidean distance from each pixel to the nearest pixel of
  another label (background or another object) -- centrosome's ``distance_to_edge``, a
  ``distance_transform_edt`` of each object. Outside the image does not count as edge.
* **Centre**: the object's pixel farthest from its edge (the maximum of ``d_e``; among tied
  maxima the first in C order, as cp_measure does -- CellProfiler's
  ``scipy.ndimage.maximum_position`` picks an implementation-dependent one).
* **Distance from the centre** ``d_c``: CellProfiler propagates from the centre with
  centrosome's ``propagate`` on a zero image, i.e. the geodesic distance *inside the object*
  along 8-connected paths, a step costing 1 (axial) or sqrt(2) (diagonal). Pixels that no such
  path reaches (parts of the object not 8-connected to the centre) are left out of every bin,
  as in CellProfiler. The geodesic (octagonal chamfer) distance is what CellProfiler measures;
  a Euclidean distance from the centre would differ by up to 8 % (and far more in the ring-shaped
  ``Cytoplasm``, where the path goes around the nucleus), so it is not used.
* **Bins**: ``r = d_c / (d_c + d_e + 0.001)``, bin ``floor(r * bin_count)``.
* ``FracAtD_<ch>_<i>of<n>``: the fraction of the object's total intensity in bin ``i``;
  ``MeanFrac``: that fraction divided by the fraction of the object's pixels in the bin (plus
  ``eps``); ``RadialCV``: each bin is split into 8 wedges around the centre (by the signs of
  ``dy``, ``dx`` and whether ``|dy| > |dx|``), and the coefficient of variation (population
  standard deviation / mean) of the mean intensities of the non-empty wedges is reported (0
  without any; the standard deviation itself when the mean is 0, as CellProfiler's masked
  division leaves it).

Columns are ``<Comp>_RadialDistribution_{FracAtD,MeanFrac,RadialCV}_<ch>_<i>of<n>``, ordered by
compartment, channel, feature, bin. NaN for an object absent from a compartment; an object of
zero total intensity gets NaN fractions (0/0), as in CellProfiler.

Implementation
--------------
The geometry is computed once per compartment, for all objects at once, by compiled kernels:
``d_e`` by a two-pass separable exact Euclidean distance transform (Felzenszwalb & Huttenlocher)
run on each run of equal labels along columns and then rows, with a zero at each end of a run
that lies inside the image (the nearest pixel of another label is always 4-adjacent to the
object, so this equals the per-object transform); the centres by one arg-max pass; ``d_c`` by
forward/backward chamfer sweeps restricted to same-label neighbours, repeated until nothing
changes (the fixed point of the same equations Dijkstra solves in ``propagate``). Each channel
then needs one pass accumulating intensity per (object, bin, wedge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from hcsflow.features._objects import COMPARTMENTS, Features, check_compartments

#: The radial features, in CellProfiler's order.
RADIAL_FEATURES: tuple[str, ...] = ("FracAtD", "MeanFrac", "RadialCV")

_SQRT2 = np.sqrt(2.0)


@numba.njit(cache=True, nogil=True)
def _envelope_1d(f: np.ndarray, m: int, out: np.ndarray, v: np.ndarray, z: np.ndarray) -> None:
    """Squared 1-D distance transform of ``f[:m]`` into ``out[:m]`` (Felzenszwalb-Huttenlocher).

    ``f`` holds squared distances, ``inf`` where there is no finite value; ``v``/``z`` are
    scratch of sizes ``m`` and ``m + 1``.
    """
    k = -1
    for q in range(m):
        if f[q] == np.inf:
            continue
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -np.inf
            z[1] = np.inf
            continue
        s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
        while s <= z[k]:  # z[0] = -inf stops this at k = 0
            k -= 1
            s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]))
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = np.inf
    if k < 0:
        for q in range(m):
            out[q] = np.inf
        return
    j = 0
    for q in range(m):
        while z[j + 1] < q:
            j += 1
        d = q - v[j]
        out[q] = d * d + f[v[j]]


@numba.njit(cache=True, nogil=True)
def distance_to_edge(labels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each object pixel to the nearest pixel of another label.

    Equals centrosome's ``cpmorphology.distance_to_edge`` (a ``distance_transform_edt`` of each
    object, outside the image not counting as edge).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)

    Returns
    -------
    ndarray of float64, shape (H, W)
        0 on the background.
    """
    h, w = labels.shape
    n = max(h, w) + 2
    g = np.full((h, w), np.inf)
    # columns: distance to the ends of each run of one label (ends inside the image only)
    for j in range(w):
        i = 0
        while i < h:
            k = labels[i, j]
            a = i
            while i < h and labels[i, j] == k:
                i += 1
            if k == 0:
                continue
            b = i - 1
            for r in range(a, b + 1):
                d = np.inf
                if a > 0:
                    d = r - a + 1.0
                if b < h - 1:
                    d = min(d, b + 1.0 - r)
                g[r, j] = d * d
    out = np.zeros((h, w))
    f = np.empty(n)
    res = np.empty(n)
    v = np.empty(n, dtype=np.int64)
    z = np.empty(n + 1)
    for i in range(h):
        j = 0
        while j < w:
            k = labels[i, j]
            a = j
            while j < w and labels[i, j] == k:
                j += 1
            if k == 0:
                continue
            b = j - 1
            # positions a-1 .. b+1 shifted by one: index q <-> column a - 1 + q
            m = b - a + 3
            f[0] = 0.0 if a > 0 else np.inf
            f[m - 1] = 0.0 if b < w - 1 else np.inf
            for q in range(a, b + 1):
                f[q - a + 1] = g[i, q]
            _envelope_1d(f, m, res, v, z)
            for q in range(a, b + 1):
                out[i, q] = np.sqrt(res[q - a + 1])
    return out


@numba.njit(cache=True, nogil=True)
def _centres(labels: np.ndarray, d_edge: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each object's maximum of ``d_edge`` (first in C order); -1 if absent."""
    h, w = labels.shape
    best = np.full(n, -1.0)
    ci = np.full(n, -1, dtype=np.int64)
    cj = np.full(n, -1, dtype=np.int64)
    for i in range(h):
        for j in range(w):
            k = labels[i, j]
            if k == 0:
                continue
            if d_edge[i, j] > best[k - 1]:
                best[k - 1] = d_edge[i, j]
                ci[k - 1] = i
                cj[k - 1] = j
    return ci, cj


@numba.njit(cache=True, nogil=True)
def _bboxes(labels: np.ndarray, n: int) -> np.ndarray:
    """Inclusive bounding boxes (n, 4) = (row0, row1, col0, col1); row0 > row1 if absent."""
    h, w = labels.shape
    bb = np.empty((n, 4), dtype=np.int64)
    bb[:, 0] = h
    bb[:, 1] = -1
    bb[:, 2] = w
    bb[:, 3] = -1
    for i in range(h):
        for j in range(w):
            k = labels[i, j]
            if k == 0:
                continue
            b = bb[k - 1]
            b[0] = min(b[0], i)
            b[1] = max(b[1], i)
            b[2] = min(b[2], j)
            b[3] = max(b[3], j)
    return bb


@numba.njit(cache=True, nogil=True)
def geodesic_from_centres(labels: np.ndarray, ci: np.ndarray, cj: np.ndarray) -> np.ndarray:
    """Geodesic 8-connected chamfer (1, sqrt 2) distance from each object's centre, inside it.

    Forward/backward raster sweeps over each object's bounding box, restricted to its own
    pixels, repeated until nothing changes.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
    ci, cj : ndarray of int64, shape (n,)
        Centre of object ``k`` at ``(ci[k - 1], cj[k - 1])``; -1 for an absent object.

    Returns
    -------
    ndarray of float64, shape (H, W)
        ``inf`` where no path inside the object reaches the pixel (and on the background).
    """
    h, w = labels.shape
    n = ci.size
    bb = _bboxes(labels, n)
    d = np.full((h, w), np.inf)
    diag = np.sqrt(2.0)
    for kk in range(n):
        if ci[kk] < 0:
            continue
        k = kk + 1
        d[ci[kk], cj[kk]] = 0.0
        r0, r1, c0, c1 = bb[kk, 0], bb[kk, 1], bb[kk, 2], bb[kk, 3]
        changed = True
        while changed:
            changed = False
            for i in range(r0, r1 + 1):
                for j in range(c0, c1 + 1):
                    if labels[i, j] != k:
                        continue
                    m = d[i, j]
                    if i > r0:
                        if j > c0 and labels[i - 1, j - 1] == k and d[i - 1, j - 1] + diag < m:
                            m = d[i - 1, j - 1] + diag
                        if labels[i - 1, j] == k and d[i - 1, j] + 1.0 < m:
                            m = d[i - 1, j] + 1.0
                        if j < c1 and labels[i - 1, j + 1] == k and d[i - 1, j + 1] + diag < m:
                            m = d[i - 1, j + 1] + diag
                    if j > c0 and labels[i, j - 1] == k and d[i, j - 1] + 1.0 < m:
                        m = d[i, j - 1] + 1.0
                    if m < d[i, j]:
                        d[i, j] = m
                        changed = True
            for i in range(r1, r0 - 1, -1):
                for j in range(c1, c0 - 1, -1):
                    if labels[i, j] != k:
                        continue
                    m = d[i, j]
                    if i < r1:
                        if j < c1 and labels[i + 1, j + 1] == k and d[i + 1, j + 1] + diag < m:
                            m = d[i + 1, j + 1] + diag
                        if labels[i + 1, j] == k and d[i + 1, j] + 1.0 < m:
                            m = d[i + 1, j] + 1.0
                        if j > c0 and labels[i + 1, j - 1] == k and d[i + 1, j - 1] + diag < m:
                            m = d[i + 1, j - 1] + diag
                    if j < c1 and labels[i, j + 1] == k and d[i, j + 1] + 1.0 < m:
                        m = d[i, j + 1] + 1.0
                    if m < d[i, j]:
                        d[i, j] = m
                        changed = True
    return d


@numba.njit(cache=True, nogil=True)
def _cells(
    labels: np.ndarray,
    d_edge: np.ndarray,
    d_centre: np.ndarray,
    ci: np.ndarray,
    cj: np.ndarray,
    bin_count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel index and (object, bin, wedge) cell of every binned pixel."""
    h, w = labels.shape
    total = 0
    for i in range(h):
        for j in range(w):
            if labels[i, j] > 0 and d_centre[i, j] < np.inf:
                total += 1
    pix = np.empty(total, dtype=np.int64)
    cell = np.empty(total, dtype=np.int64)
    t = 0
    for i in range(h):
        for j in range(w):
            k = labels[i, j]
            if k == 0 or d_centre[i, j] == np.inf:
                continue
            dc = d_centre[i, j]
            r = dc / (dc + d_edge[i, j] + 0.001)
            b = int(r * bin_count)
            if b > bin_count - 1:  # r < 1, so never in practice (CellProfiler's overflow)
                b = bin_count - 1
            di = i - ci[k - 1]
            dj = j - cj[k - 1]
            wedge = (1 if di > 0 else 0) + (2 if dj > 0 else 0) + (4 if abs(di) > abs(dj) else 0)
            pix[t] = i * w + j
            cell[t] = ((k - 1) * bin_count + b) * 8 + wedge
            t += 1
    return pix, cell


@numba.njit(cache=True, nogil=True)
def _accumulate(image: np.ndarray, pix: np.ndarray, cell: np.ndarray, ncell: int) -> np.ndarray:
    """Intensity per cell, for every channel of ``image`` (C, H * W); returns (C, ncell)."""
    nch = image.shape[0]
    out = np.zeros((nch, ncell))
    for c in range(nch):
        img = image[c]
        o = out[c]
        for t in range(pix.size):
            o[cell[t]] += img[pix[t]]
    return out


def _features(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FracAtD, MeanFrac, RadialCV (each (n, bins)) from per-wedge sums and counts (n, bins, 8)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = sums.sum(axis=2)
        frac = per_bin / per_bin.sum(axis=1, keepdims=True)
        n_bin = counts.sum(axis=2)
        frac_px = n_bin / n_bin.sum(axis=1, keepdims=True)
        mean_frac = frac / (frac_px + np.finfo(float).eps)
        valid = counts > 0
        nvalid = valid.sum(axis=2)
        wedge_mean = np.where(valid, sums / np.where(valid, counts, 1.0), 0.0)
        mean = wedge_mean.sum(axis=2) / nvalid
        dev = np.where(valid, wedge_mean - mean[..., None], 0.0)
        std = np.sqrt((dev * dev).sum(axis=2) / nvalid)
        cv = np.where(mean != 0, std / mean, std)
        cv[nvalid == 0] = 0.0
    return frac, mean_frac, cv


def measure_radial(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    bin_count: int = 4,
    center: str = "self",
) -> Features:
    """CellProfiler's MeasureObjectIntensityDistribution for every compartment and channel.

    Parameters
    ----------
    image : ndarray of float, shape (C, H, W)
        Illumination-corrected channels in CellProfiler units.
    compartments : mapping of str to ndarray of int, shape (H, W)
        Compartment name -> label image in which object ``k`` is output row ``k - 1``.
    n : int
        Number of rows (objects).
    channel_names : sequence of str
        C channel names used in the column names.
    bin_count : int
        Number of scaled radial bins (CellProfiler's default 4).
    center : {"self"}
        Centre of the rings: ``"self"``, each object's point farthest from its edge
        (CellProfiler's "These objects"); the only choice implemented.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_RadialDistribution_<Feature>_<ch>_<i>of<bin_count>`` for
        :data:`RADIAL_FEATURES` and ``i = 1..bin_count``, ordered by compartment, channel,
        feature, bin. NaN for objects absent from a compartment.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != len(channel_names):
        raise ValueError(
            f"image must be (C, H, W) with C = {len(channel_names)} channels, got {image.shape}"
        )
    if center != "self":
        raise ValueError(f"center must be 'self' (the only choice implemented), got {center!r}")
    if int(bin_count) != bin_count or bin_count < 1:
        raise ValueError(f"bin_count must be a positive integer, got {bin_count!r}")
    bin_count = int(bin_count)
    check_compartments(compartments, n)
    names = [c for c in COMPARTMENTS if c in compartments] + [
        c for c in compartments if c not in COMPARTMENTS
    ]
    flat_image = np.ascontiguousarray(image).reshape(image.shape[0], -1)
    if flat_image.dtype != np.float32:
        flat_image = flat_image.astype(np.float64)
    out: Features = {}
    for comp in names:
        labels = np.ascontiguousarray(compartments[comp])
        if labels.shape != image.shape[1:]:
            raise ValueError(f"{comp} labels {labels.shape} do not match the image {image.shape}")
        d_edge = distance_to_edge(labels)
        ci, cj = _centres(labels, d_edge, n)
        d_centre = geodesic_from_centres(labels, ci, cj)
        pix, cell = _cells(labels, d_edge, d_centre, ci, cj, bin_count)
        ncell = n * bin_count * 8
        counts = np.bincount(cell, minlength=ncell).astype(np.float64).reshape(n, bin_count, 8)
        sums = _accumulate(flat_image, pix, cell, ncell).reshape(
            len(channel_names), n, bin_count, 8
        )
        absent = counts.sum(axis=(1, 2)) == 0
        for c, ch in enumerate(channel_names):
            feats = _features(sums[c], counts)
            for name, values in zip(RADIAL_FEATURES, feats, strict=True):
                values[absent] = np.nan
                for b in range(bin_count):
                    key = f"{comp}_RadialDistribution_{name}_{ch}_{b + 1}of{bin_count}"
                    out[key] = np.ascontiguousarray(values[:, b])
    return out
