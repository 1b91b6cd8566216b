"""Object size and shape: CellProfiler 4's MeasureObjectSizeShape (``AreaShape``) features.

For every compartment label image this module measures, per object ``k`` (row ``k - 1``):

``AreaShape_*``
    Area, Perimeter, FormFactor, Eccentricity, Solidity, Extent, MajorAxisLength,
    MinorAxisLength, Orientation, Compactness, EulerNumber, ConvexArea, EquivalentDiameter,
    BoundingBoxArea, BoundingBoxMinimum/Maximum_X/Y, Center_X/Y, MaxFeretDiameter,
    MinFeretDiameter, MeanRadius, MaximumRadius, MedianRadius and the Zernike shape moments
    ``Zernike_<n>_<m>`` (``n <= zernike_degree``, ``0 <= m <= n``, ``n - m`` even; 30 for
    degree 9). With ``advanced=True`` also CellProfiler's "advanced" moment features
    (SpatialMoment, CentralMoment, NormalizedMoment, HuMoment, InertiaTensor,
    InertiaTensorEigenvalues; CellProfiler's default leaves them out, and so do we).
``Location_Center_X/Y``, ``Number_Object_Number``
    The centroid and the object number that CellProfiler's Identify modules record.

How the numbers match CellProfiler 4 (which measures through ``skimage.measure.regionprops``
and ``centrosome``; ``cp_measure`` packages the same code and is our reference):

* Area, centroid, bounding box (maximum exclusive, as regionprops' ``bbox``), Extent,
  EquivalentDiameter: from one pass over the label image.
* Second moments: central moments from sums about each object's first pixel (no cancellation
  to speak of); axis lengths are ``4 sqrt(eigenvalue)`` of the inertia tensor, eccentricity
  ``sqrt(1 - l2 / l1)``, orientation ``0.5 atan2(2 mu11, mu20 - mu02)`` in degrees: the angle
  between the row axis and the major axis (a horizontal ellipse is at +-90). When
  ``mu20 == mu02`` it is +45 for ``mu11 > 0`` and -45 otherwise, the limit of the general
  formula, as current scikit-image and cp_measure give (scikit-image before 0.19, which
  CellProfiler 4.2 pinned, had the opposite signs for this degenerate case).
* Perimeter: ``skimage.measure.perimeter(neighborhood=4)`` of the object alone: border pixels
  (a 4-neighbour outside the object) are weighted 1, sqrt(2) or (1 + sqrt(2)) / 2 by the
  pattern of their border neighbours (Benkrid & Crookes). FormFactor ``4 pi A / P^2``,
  Compactness ``P^2 / max(4 pi A, 1)``.
* EulerNumber: 8-connected objects minus 4-connected holes, from skimage's 2 x 2 bit-quad
  table, each window counted for every object that occupies it.
* ConvexArea / Solidity: regionprops' ``image_convex`` is the set of pixel centres inside or
  on the convex hull of the pixel-edge midpoints; that polygon is the hull of the pixel-centre
  hull dilated by the unit diamond, whose vertices lie on the half-pixel grid, so the pixel
  centres inside it are counted exactly with integer arithmetic, row by row.
* Feret diameters: centrosome's definitions on the convex hull of the pixel centres: the
  maximum is the largest vertex distance, the minimum the smallest caliper width (over hull
  edges, the largest distance of a vertex from the edge's line).
* Radii: the exact Euclidean distance of each pixel to the nearest pixel outside the object
  alone (other objects and the image edge count as outside, as in CellProfiler's distance
  transform of the zero-padded object crop), max / mean / median over the object. The nearest
  outside pixel is 4-adjacent to the object, so a pixel of a row run only needs the column
  distances of its run and the run's two ends: one sweep over the rows, no per-object images.
* Zernike: centrosome's moments: pixel coordinates are scaled into the minimum enclosing circle
  of the pixel centres, pixels with ``x^2 + y^2 > 1`` dropped, and the magnitude ``|sum V_nm|``
  divided by ``pi R^2``. The circle is found by a port of centrosome's own search over the
  hull vertices in centrosome's order, because the pixels on the circle are kept or dropped by
  round-off in that test: the same roles give bit-identical circles and the same pixels. The
  sums are accumulated as monomials ``sum y^a x^b`` (row sums first, so a pixel costs
  ``degree + 1`` additions) and mapped to the ``V_nm`` by a fixed matrix.

Per-pixel work is three sweeps over the label image in numba kernels (label-indexed
accumulators, :mod:`hcsflow.features._shape_pixels`); per-object work (hulls, calipers,
circles, lattice counts, :mod:`hcsflow.features._shape_hull`) loops over the objects inside one
numba kernel, on each object's column extents; the Zernike and advanced moment features are
assembled in :mod:`hcsflow.features._shape_moments`. This module puts them together.

Deliberate differences: an object whose perimeter is 0 (one or two pixels) gets a NaN
FormFactor where CellProfiler divides by zero (inf); objects without pixels get NaN everywhere,
including ``Number_Object_Number``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from hcsflow.features._objects import COMPARTMENTS, Features, check_compartments, nan_absent
from hcsflow.features._shape_hull import _hull_features
from hcsflow.features._shape_moments import (
    _zernike_matrix,
    advanced_moment_features,
    zernike_features,
    zernike_indexes,
)
from hcsflow.features._shape_pixels import _PERIMETER_WEIGHTS, _radius_stats, _row_pass, _scan

__all__ = ["measure_shape", "zernike_indexes"]

#: The scalar AreaShape features, in output order (Zernike and advanced moments follow).
SHAPE_FEATURES: tuple[str, ...] = (
    "Area",
    "Perimeter",
    "FormFactor",
    "Eccentricity",
    "Solidity",
    "Extent",
    "MajorAxisLength",
    "MinorAxisLength",
    "Orientation",
    "Compactness",
    "EulerNumber",
    "ConvexArea",
    "EquivalentDiameter",
    "BoundingBoxArea",
    "BoundingBoxMinimum_X",
    "BoundingBoxMinimum_Y",
    "BoundingBoxMaximum_X",
    "BoundingBoxMaximum_Y",
    "Center_X",
    "Center_Y",
    "MaxFeretDiameter",
    "MinFeretDiameter",
    "MeanRadius",
    "MaximumRadius",
    "MedianRadius",
)


class _Scan(NamedTuple):
    """The results of :func:`~hcsflow.features._shape_pixels._scan`, by name."""

    area: np.ndarray
    rmin: np.ndarray
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray
    ref: np.ndarray
    sums: np.ndarray
    perimeter: np.ndarray
    euler: np.ndarray
    coldist: np.ndarray
    col_offset: np.ndarray
    top: np.ndarray
    bottom: np.ndarray


def _centroids(
    scan: _Scan, area: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centroid ``(cy, cx)`` (0 for absent objects) and second central moments ``mu20, mu11,
    mu02`` of every label, each of shape (n + 1,), from the sums about each first pixel."""
    sums, ref = scan.sums, scan.ref
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dr = sums[:, 0] / area
        mean_dc = sums[:, 1] / area
        cy = ref[:, 0] + mean_dr
        cx = ref[:, 1] + mean_dc
        # second central moments from sums about the first pixel (no cancellation to speak of)
        mu20 = sums[:, 2] - sums[:, 0] * mean_dr
        mu11 = sums[:, 3] - sums[:, 0] * mean_dc
        mu02 = sums[:, 4] - sums[:, 1] * mean_dc
    cy[~present] = 0.0
    cx[~present] = 0.0
    return cy, cx, mu20, mu11, mu02


def _inertia(
    mu20: np.ndarray, mu11: np.ndarray, mu02: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inertia tensor ``(it_rr, it_rc, it_cc)`` (row variance, covariance, column variance)
    and its eigenvalues ``l1 >= l2``, each of shape (n,), from central moments and areas."""
    with np.errstate(invalid="ignore", divide="ignore"):
        it_rr = mu20 / a  # row variance
        it_rc = mu11 / a
        it_cc = mu02 / a  # column variance
        half_trace = (it_rr + it_cc) / 2
        disc = np.sqrt(((it_cc - it_rr) / 2) ** 2 + it_rc**2)
        l1 = np.clip(half_trace + disc, 0.0, None)
        l2 = np.clip(half_trace - disc, 0.0, None)
    return it_rr, it_rc, it_cc, l1, l2


def _radii_and_zernike_sums(
    padded: np.ndarray,
    scan: _Scan,
    present: np.ndarray,
    circle: tuple[np.ndarray, np.ndarray, np.ndarray],
    zernike_degree: int,
    mono_index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximum, mean and median radius (n + 1,) and Zernike monomial sums (n + 1, M).

    ``circle`` is the minimum enclosing circle ``(centre_i, centre_j, radius)`` per label.
    """
    n = len(present) - 1
    circ_i, circ_j, circ_r = circle
    # a pixel is at most half the shorter bounding-box side (rounded up) from the outside
    reach = (np.minimum(scan.rmax - scan.rmin, scan.cmax - scan.cmin) + 2) // 2
    hist_offset = np.zeros(n + 2, np.int64)
    np.cumsum(np.where(present, reach * reach + 1, 0), out=hist_offset[1:])
    hist, mono = _row_pass(
        padded, n, scan.coldist, hist_offset, circ_i, circ_j, circ_r, zernike_degree, mono_index
    )
    max_r, mean_r, median_r = _radius_stats(n, scan.area, hist_offset, hist)
    return max_r, mean_r, median_r, mono


def _areashape(
    scan: _Scan,
    a: np.ndarray,
    centre: tuple[np.ndarray, np.ndarray],
    inertia: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    hull: tuple[np.ndarray, np.ndarray, np.ndarray],
    radii: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> Features:
    """The scalar ``AreaShape_*`` features (:data:`SHAPE_FEATURES`) of objects 1..n.

    Parameters
    ----------
    scan : _Scan
        Per-label results of the pixel scan (arrays indexed by label, length n + 1).
    a : ndarray of float64, shape (n,)
        Areas of objects 1..n.
    centre : tuple of ndarray, shape (n,)
        ``(cy, cx)`` of objects 1..n.
    inertia : tuple of ndarray, shape (n,)
        ``(it_rr, it_rc, it_cc, l1, l2)`` of :func:`_inertia`.
    hull : tuple of ndarray, shape (n,)
        Convex area, minimum and maximum Feret diameter of objects 1..n.
    radii : tuple of ndarray, shape (n,)
        Maximum, mean and median radius of objects 1..n.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
    """
    n = len(a)
    sl = slice(1, n + 1)
    cy, cx = centre
    it_rr, it_rc, it_cc, l1, l2 = inertia
    convex_area, feret_min, feret_max = hull
    max_r, mean_r, median_r = radii
    rmin, rmax, cmin, cmax = scan.rmin[sl], scan.rmax[sl], scan.cmin[sl], scan.cmax[sl]
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(l1 == 0, 0.0, np.sqrt(1 - l2 / l1))
        orientation = np.where(
            it_cc - it_rr == 0,
            np.where(it_rc > 0, np.pi / 4, -np.pi / 4),
            0.5 * np.arctan2(2 * it_rc, it_rr - it_cc),
        )
        p = scan.perimeter[sl]
        form_factor = np.where(p > 0, 4.0 * np.pi * a / p**2, np.nan)
        compactness = p**2 / np.maximum(4.0 * np.pi * a, 1.0)
        bbox_h = (rmax - rmin + 1).astype(np.float64)
        bbox_w = (cmax - cmin + 1).astype(np.float64)
        bbox_area = bbox_h * bbox_w
        values = {
            "Area": a,
            "Perimeter": p,
            "FormFactor": form_factor,
            "Eccentricity": eccentricity,
            "Solidity": a / convex_area,
            "Extent": a / bbox_area,
            "MajorAxisLength": 4 * np.sqrt(l1),
            "MinorAxisLength": 4 * np.sqrt(l2),
            "Orientation": orientation * (180.0 / np.pi),
            "Compactness": compactness,
            "EulerNumber": scan.euler[sl].astype(np.float64),
            "ConvexArea": convex_area,
            "EquivalentDiameter": np.sqrt(4.0 * a / np.pi),
            "BoundingBoxArea": bbox_area,
            "BoundingBoxMinimum_X": cmin.astype(np.float64),
            "BoundingBoxMinimum_Y": rmin.astype(np.float64),
            "BoundingBoxMaximum_X": (cmax + 1).astype(np.float64),
            "BoundingBoxMaximum_Y": (rmax + 1).astype(np.float64),
            "Center_X": cx.copy(),
            "Center_Y": cy.copy(),
            "MaxFeretDiameter": feret_max,
            "MinFeretDiameter": feret_min,
            "MeanRadius": mean_r,
            "MaximumRadius": max_r,
            "MedianRadius": median_r,
        }
    return {f"AreaShape_{k}": np.asarray(v, dtype=np.float64) for k, v in values.items()}


def _shape_one(labels: np.ndarray, n: int, zernike_degree: int, advanced: bool) -> Features:
    """All AreaShape / Location / Number features of one label image (names without compartment)."""
    h, w = labels.shape
    padded = np.zeros((h + 2, w + 2), np.int32)
    padded[1:-1, 1:-1] = labels
    scan = _Scan(*_scan(padded, n, _PERIMETER_WEIGHTS))
    present = scan.area > 0
    present[0] = False
    area = scan.area.astype(np.float64)
    cy, cx, mu20, mu11, mu02 = _centroids(scan, area, present)
    convex_area, feret_min, feret_max, circ_i, circ_j, circ_r = _hull_features(
        n, present, scan.cmin, scan.cmax, scan.col_offset, scan.top, scan.bottom
    )
    mono_index, _ = _zernike_matrix(zernike_degree)
    max_r, mean_r, median_r, mono = _radii_and_zernike_sums(
        padded, scan, present, (circ_i, circ_j, circ_r), zernike_degree, mono_index
    )

    sl = slice(1, n + 1)
    a = area[sl]
    inertia = _inertia(mu20[sl], mu11[sl], mu02[sl], a)
    out = _areashape(
        scan,
        a,
        (cy[sl], cx[sl]),
        inertia,
        (convex_area[sl], feret_min[sl], feret_max[sl]),
        (max_r[sl], mean_r[sl], median_r[sl]),
    )
    out.update(zernike_features(mono[sl], circ_r[sl], zernike_degree))
    if advanced:
        out.update(
            advanced_moment_features(padded[1:-1, 1:-1], n, (cy, cx), scan.rmin, scan.cmin, inertia)
        )
    out["Location_Center_X"] = cx[sl].copy()
    out["Location_Center_Y"] = cy[sl].copy()
    out["Number_Object_Number"] = np.arange(1, n + 1, dtype=np.float64)
    return nan_absent(out, present[sl])


def measure_shape(
    image: np.ndarray,
    compartments: Mapping[str, np.ndarray],
    n: int,
    channel_names: Sequence[str],
    *,
    zernike_degree: int = 9,
    advanced: bool = False,
) -> Features:
    """CellProfiler MeasureObjectSizeShape features of every object of every compartment.

    Parameters
    ----------
    image : ndarray of float32, shape (C, H, W)
        Unused (shape features depend on the label images only); accepted for the family
        signature.
    compartments : mapping of str to ndarray of int, shape (H, W)
        Label image per compartment (``"Cells"``, ``"Nuclei"``, ``"Cytoplasm"``); object ``k``
        is output row ``k - 1``, 0 is background.
    n : int
        Number of rows (objects).
    channel_names : sequence of str
        Unused.
    zernike_degree : int, optional
        Highest Zernike order ``n`` (CellProfiler: 9, giving 30 features).
    advanced : bool, optional
        Also return CellProfiler's "advanced" moment features (spatial, central, normalized
        and Hu moments, inertia tensor and its eigenvalues). Off by default, as in CellProfiler.

    Returns
    -------
    dict of str to ndarray of float64, shape (n,)
        ``<Comp>_AreaShape_<Feature>``, ``<Comp>_AreaShape_Zernike_<n>_<m>``,
        ``<Comp>_Location_Center_X/Y`` and ``<Comp>_Number_Object_Number`` for each compartment
        (in the order Cells, Nuclei, Cytoplasm, then any other names in mapping order); NaN for
        objects without pixels.

    Raises
    ------
    ValueError
        On label images of different shapes, non-integer or above ``n``, or a negative
        ``zernike_degree``.
    """
    del image, channel_names
    if int(zernike_degree) != zernike_degree or zernike_degree < 0:
        raise ValueError(f"zernike_degree must be a non-negative integer, got {zernike_degree!r}")
    check_compartments(compartments, n)
    names = [c for c in COMPARTMENTS if c in compartments]
    names += [c for c in compartments if c not in COMPARTMENTS]
    out: Features = {}
    for comp in names:
        feats = _shape_one(compartments[comp], int(n), int(zernike_degree), bool(advanced))
        for key, values in feats.items():
            out[f"{comp}_{key}"] = values
    return out
