"""Object neighbourhoods: CellProfiler 4's MeasureObjectNeighbors for Cells and Nuclei.

For each object ``k`` of the ``Cells`` and ``Nuclei`` compartments (neighbours taken from the
same compartment), with method *Adjacent* (``distance=0``, suffix ``_Adjacent``) or *Within a
specified distance* (``distance=N``, suffix ``_N``):

``Neighbors_NumberOfNeighbors``
    Objects with a pixel within ``N`` pixels (Euclidean, CellProfiler's ``strel_disk(N)``
    dilation; ``N = 1`` for Adjacent, i.e. 4-connected touching) of a pixel of ``k``.
``Neighbors_PercentTouching``
    ``100 *`` the fraction of ``k``'s outline pixels (pixels with an 8-neighbour of another
    label, or on the image edge: centrosome's ``outline``) that lie within ``N + 0.5`` pixels
    (``strel_disk(N + 0.5)``) of a pixel of another object.
``Neighbors_First/SecondClosestDistance``, ``..._First/SecondClosestObjectNumber``
    The nearest and second-nearest other objects by distance between centroids, over all
    objects of the compartment (not only the neighbours); the object number is the row
    number ``k`` of the neighbour.
``Neighbors_AngleBetweenNeighbors``
    The angle in degrees at ``k``'s centroid between the vectors to the first and second
    closest centroids.

Method, vectorised: the two closest pixels of two objects lie on the objects' boundaries (a
step from either towards the other would otherwise be a closer pair), so neighbour pairs come
from one sweep over the 4-boundary pixels, each looking at the half-disk of offsets of radius
``N`` (each pair is seen from one side), collected in a set; touching outline pixels from one
sweep over the outline pixels and the disk of radius ``N + 0.5``; closest centroids from a
k-d tree. CellProfiler loops over objects with a dilation per object.

Conventions kept from CellProfiler: with fewer than two objects every value is 0; with exactly
two, the second closest distance, number and the angle are 0. Deliberate differences: objects
without pixels are NaN (CellProfiler renumbers them away); the cosine of the angle is clipped to
[-1, 1] before ``arccos`` (CellProfiler may return NaN on round-off); ties between equally
distant centroids go to the lower object number (CellProfiler's ``lexsort`` does the same for
the object numbers, its ``argpartition`` may pick either for the distances and angle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np
from scipy.spatial import cKDTree

from hcsflow.features._objects import Features, check_compartments, nan_absent

__all__ = ["NEIGHBOR_COMPARTMENTS", "NEIGHBOR_FEATURES", "measure_neighbors"]

#: Compartments measured (the cytoplasm is not, as in CellProfiler pipelines).
NEIGHBOR_COMPARTMENTS: tuple[str, ...] = ("Cells", "Nuclei")

#: Features per compartment, in column order (suffix _Adjacent or _<distance>).
NEIGHBOR_FEATURES = (
    "NumberOfNeighbors",
    "PercentTouching",
    "FirstClosestDistance",
    "FirstClosestObjectNumber",
    "SecondClosestDistance",
    "SecondClosestObjectNumber",
    "AngleBetweenNeighbors",
)


def _disk_offsets(radius: float, half: bool) -> np.ndarray:
    """Offsets ``(dr, dc)`` of ``centrosome.cpmorphology.strel_disk(radius)`` without ``(0, 0)``.

    Sorted by distance (a search can stop at its first hit); ``half`` keeps one of each pair
    ``+-(dr, dc)`` (``dr > 0``, or ``dr == 0`` and ``dc > 0``). Shape (K, 2), int64.
    """
    reach = int(radius)
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    keep = (dr * dr + dc * dc <= radius * radius) & ((dr != 0) | (dc != 0))
    if half:
        keep &= (dr > 0) | ((dr == 0) & (dc > 0))
    off = np.column_stack([dr[keep], dc[keep]]).astype(np.int64)
    order = np.lexsort((off[:, 1], off[:, 0], (off**2).sum(axis=1)))
    return off[order]


@numba.njit(cache=True, nogil=True)
def _contacts(labels, n, pair_offsets, touch_offsets):  # pragma: no cover - compiled
    """Per object (0..n): area, coordinate sums, neighbour count, touching and outline pixels."""
    h, w = labels.shape
    pairs = set()
    pairs.add(np.int64(-1))  # typed empty set
    area = np.zeros(n + 1, np.int64)
    sum_r = np.zeros(n + 1, np.float64)
    sum_c = np.zeros(n + 1, np.float64)
    touching = np.zeros(n + 1, np.int64)
    outline = np.zeros(n + 1, np.int64)
    for r in range(h):
        for c in range(w):
            k = labels[r, c]
            if k == 0:
                continue
            area[k] += 1
            sum_r[k] += r
            sum_c[k] += c
            edge = r == 0 or c == 0 or r == h - 1 or c == w - 1
            boundary4 = (
                edge
                or labels[r - 1, c] != k
                or labels[r + 1, c] != k
                or labels[r, c - 1] != k
                or labels[r, c + 1] != k
            )
            is_outline = (
                boundary4
                or labels[r - 1, c - 1] != k
                or labels[r - 1, c + 1] != k
                or labels[r + 1, c - 1] != k
                or labels[r + 1, c + 1] != k
            )
            if not is_outline:
                continue
            outline[k] += 1
            for t in range(touch_offsets.shape[0]):
                rr = r + touch_offsets[t, 0]
                cc = c + touch_offsets[t, 1]
                if 0 <= rr < h and 0 <= cc < w:
                    b = labels[rr, cc]
                    if b != 0 and b != k:
                        touching[k] += 1
                        break
            if not boundary4:
                continue
            for t in range(pair_offsets.shape[0]):
                rr = r + pair_offsets[t, 0]
                cc = c + pair_offsets[t, 1]
                if 0 <= rr < h and 0 <= cc < w:
                    b = labels[rr, cc]
                    if b != 0 and b != k:
                        lo = min(k, b)
                        hi = max(k, b)
                        pairs.add(np.int64(lo) * (n + 1) + hi)
    number = np.zeros(n + 1, np.int64)
    for code in pairs:
        if code < 0:
            continue
        number[code // (n + 1)] += 1
        number[code % (n + 1)] += 1
    return area, sum_r, sum_c, number, touching, outline


def _closest(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first and second closest other point of each point.

    Parameters
    ----------
    centres : ndarray of float64, shape (m, 2), m >= 2

    Returns
    -------
    first, second : ndarray of int64, shape (m,)
        Ties go to the lower index; ``second`` is -1 when ``m == 2``.
    """
    m = len(centres)
    k = min(m, 4)
    dist, idx = cKDTree(centres).query(centres, k=k)
    dist = np.asarray(dist).reshape(m, k)
    idx = np.asarray(idx).reshape(m, k)
    own = idx == np.arange(m)[:, None]
    # drop self; when self is missing (duplicate centres), drop the last candidate instead
    missing = ~own.any(axis=1)
    own[missing, k - 1] = True
    dist = np.where(own, np.inf, dist)
    order = np.lexsort((idx, dist), axis=1)  # by distance, then index
    ranked = np.take_along_axis(idx, order, axis=1)
    first = ranked[:, 0]
    second = ranked[:, 1] if m > 2 else np.full(m, -1, np.int64)
    return first.astype(np.int64), second.astype(np.int64)


def _neighbors_one(labels: np.ndarray, n: int, distance: int) -> dict[str, np.ndarray]:
    """The seven features of one compartment (names without compartment and suffix)."""
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    radius = 1 if distance == 0 else distance
    area, sum_r, sum_c, number, touching, outline = _contacts(
        lab, n, _disk_offsets(float(radius), half=True), _disk_offsets(radius + 0.5, half=False)
    )
    present = area[1:] > 0
    rows = np.flatnonzero(present)  # row index (object k - 1) of each present object
    m = len(rows)
    out = {name: np.zeros(n) for name in NEIGHBOR_FEATURES}
    if m >= 2:
        out["NumberOfNeighbors"] = number[1:].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["PercentTouching"] = touching[1:] * 100.0 / outline[1:]
        centres = np.column_stack([sum_r[rows + 1], sum_c[rows + 1]]) / area[rows + 1, None]
        first, second = _closest(centres)
        v1 = centres[first] - centres  # (dy, dx)
        out["FirstClosestDistance"][rows] = np.sqrt(v1[:, 1] ** 2 + v1[:, 0] ** 2)
        out["FirstClosestObjectNumber"][rows] = rows[first] + 1
        if m > 2:
            v2 = centres[second] - centres
            out["SecondClosestDistance"][rows] = np.sqrt(v2[:, 1] ** 2 + v2[:, 0] ** 2)
            out["SecondClosestObjectNumber"][rows] = rows[second] + 1
            with np.errstate(invalid="ignore", divide="ignore"):
                cos = (v1[:, 1] * v2[:, 1] + v1[:, 0] * v2[:, 0]) / np.sqrt(
                    (v1[:, 1] ** 2 + v1[:, 0] ** 2) * (v2[:, 1] ** 2 + v2[:, 0] ** 2)
                )
            out["AngleBetweenNeighbors"][rows] = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return nan_absent(out, present)


def measure_neighbors(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    distance: int = 0,
) -> Features:
    """CellProfiler MeasureObjectNeighbors features of the Cells and Nuclei compartments.

    Parameters
    ----------
    image : ndarray of float32, shape (C, H, W)
        Unused; accepted for the family signature.
    compartments : mapping of str to ndarray of int, shape (H, W)
        Label image per compartment; ``"Cells"`` and ``"Nuclei"`` are measured when present
        (others, e.g. ``"Cytoplasm"``, are ignored). Object ``k`` is output row ``k - 1``.
    n : int
        Number of rows (objects).
    channel_names : sequence of str
        Unused.
    distance : int, optional
        0 for CellProfiler's method *Adjacent* (objects touching 4-connected; suffix
        ``Adjacent``), ``N >= 1`` for *Within a specified distance* of ``N`` pixels (suffix
        ``N``).

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_Neighbors_<Feature>_<suffix>`` for the seven features of each compartment
        (Cells first); NaN for objects without pixels.

    Raises
    ------
    ValueError
        On a negative or non-integer ``distance`` or inconsistent label images.
    """
    del image, channel_names
    if isinstance(distance, bool) or int(distance) != distance or distance < 0:
        raise ValueError(f"distance must be a non-negative integer, got {distance!r}")
    distance = int(distance)
    check_compartments(compartments, n)
    suffix = "Adjacent" if distance == 0 else str(distance)
    out: Features = {}
    for comp in NEIGHBOR_COMPARTMENTS:
        if comp not in compartments:
            continue
        feats = _neighbors_one(compartments[comp], int(n), distance)
        for name in NEIGHBOR_FEATURES:
            out[f"{comp}_Neighbors_{name}_{suffix}"] = feats[name]
    return out
