"""Tests of hcsflow.features.shape: CellProfiler's AreaShape features on known shapes.

Independent oracles: closed-form values for discs, ellipses and squares, scikit-image's
``regionprops`` (what CellProfiler 4 measures with), scipy's distance transform per object,
brute-force Feret diameters and a direct per-pixel Zernike sum inside a brute-force minimum
enclosing circle.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from skimage.measure import regionprops_table

from hcsflow.features.shape import SHAPE_FEATURES, measure_shape, zernike_indexes


def _shape(labels: np.ndarray, n: int | None = None, **options) -> dict[str, np.ndarray]:
    n = int(labels.max()) if n is None else n
    out = measure_shape(
        np.zeros((1, *labels.shape), np.float32), {"Cells": labels}, n, ["DNA"], **options
    )
    return {key.removeprefix("Cells_"): values for key, values in out.items()}


def _blobs(seed: int, shape: tuple[int, int] = (90, 110)) -> np.ndarray:
    """Touching irregular objects (some with holes or several pieces), labels 1..N."""
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal(shape), 2.5)
    lab, count = ndi.label(noise > 0.02)
    cols = np.arange(shape[1])[None, :]
    lab = np.where(lab > 0, lab + count * (cols >= shape[1] // 2), 0)  # cut blobs in two
    lab[lab == lab.max()] = 1  # one label in several pieces
    _, inverse = np.unique(lab, return_inverse=True)
    return inverse.reshape(shape).astype(np.int32)


def _disc(radius: float, size: int = 101) -> np.ndarray:
    rr, cc = np.mgrid[:size, :size]
    c = size // 2
    return ((rr - c) ** 2 + (cc - c) ** 2 <= radius**2).astype(np.int32)


def test_disc_known_values():
    r = 20
    f = _shape(_disc(r))
    assert f["AreaShape_Area"][0] == pytest.approx(math.pi * r * r, rel=0.01)
    assert f["AreaShape_Perimeter"][0] == pytest.approx(2 * math.pi * r, rel=0.06)
    assert f["AreaShape_FormFactor"][0] == pytest.approx(1.0, abs=0.1)
    assert f["AreaShape_Eccentricity"][0] < 0.01
    assert f["AreaShape_Solidity"][0] > 0.95
    assert f["AreaShape_MajorAxisLength"][0] == pytest.approx(2 * r, rel=0.01)
    assert f["AreaShape_MinorAxisLength"][0] == pytest.approx(2 * r, rel=0.01)
    assert f["AreaShape_MaximumRadius"][0] == pytest.approx(r, abs=0.5)
    assert f["AreaShape_MaxFeretDiameter"][0] == pytest.approx(2 * r)
    assert f["AreaShape_MinFeretDiameter"][0] == pytest.approx(2 * r, rel=0.02)
    assert f["AreaShape_EquivalentDiameter"][0] == pytest.approx(2 * r, rel=0.01)
    assert f["AreaShape_EulerNumber"][0] == 1
    assert f["AreaShape_Center_X"][0] == f["AreaShape_Center_Y"][0] == 50
    # Zernike: a disc filling its enclosing circle is V_00 = 1 everywhere and has no other moment
    assert f["AreaShape_Zernike_0_0"][0] == pytest.approx(1.0, abs=0.005)
    for zn, zm in zernike_indexes(9)[1:]:
        assert f[f"AreaShape_Zernike_{zn}_{zm}"][0] < 0.01


@pytest.mark.parametrize("transpose", [False, True])
def test_axis_aligned_ellipse(transpose):
    a, b = 30, 15  # semi-axes along columns (x) and rows (y)
    rr, cc = np.mgrid[:81, :101]
    ell = ((rr - 40) ** 2 / b**2 + (cc - 50) ** 2 / a**2 <= 1).astype(np.int32)
    f = _shape(ell.T.copy() if transpose else ell)
    assert f["AreaShape_MajorAxisLength"][0] == pytest.approx(2 * a, rel=0.01)
    assert f["AreaShape_MinorAxisLength"][0] == pytest.approx(2 * b, rel=0.02)
    assert f["AreaShape_Eccentricity"][0] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.01)
    # angle between the row axis and the major axis: 0 if vertical, +-90 if horizontal
    expected = 0.0 if transpose else 90.0
    assert abs(f["AreaShape_Orientation"][0]) == pytest.approx(expected, abs=1e-9)
    # central symmetry: odd-m Zernike moments vanish
    for zn, zm in zernike_indexes(9):
        if zm % 2:
            assert f[f"AreaShape_Zernike_{zn}_{zm}"][0] < 1e-12


def test_square():
    lab = np.zeros((30, 40), np.int32)
    lab[5:15, 12:22] = 1
    f = _shape(lab)
    assert f["AreaShape_Area"][0] == 100
    assert f["AreaShape_Extent"][0] == 1
    assert f["AreaShape_Solidity"][0] == 1
    assert f["AreaShape_ConvexArea"][0] == 100
    assert f["AreaShape_Perimeter"][0] == pytest.approx(36)  # 4 (s - 1) border pixels
    assert f["AreaShape_MaxFeretDiameter"][0] == pytest.approx(9 * math.sqrt(2))
    assert f["AreaShape_MinFeretDiameter"][0] == pytest.approx(9)
    assert f["AreaShape_MaximumRadius"][0] == 5
    assert f["AreaShape_BoundingBoxArea"][0] == 100
    assert f["AreaShape_BoundingBoxMinimum_X"][0] == 12
    assert f["AreaShape_BoundingBoxMaximum_X"][0] == 22
    assert f["AreaShape_BoundingBoxMinimum_Y"][0] == 5
    assert f["AreaShape_BoundingBoxMaximum_Y"][0] == 15
    assert f["Location_Center_X"][0] == 16.5
    assert f["Location_Center_Y"][0] == 9.5


def test_euler_number_ring_and_pieces():
    ring = _disc(12, 41) - _disc(5, 41)
    assert _shape(ring)["AreaShape_EulerNumber"][0] == 0
    lab = np.zeros((20, 20), np.int32)
    lab[2:5, 2:5] = 1
    lab[10:14, 10:14] = 1
    lab[6, 6] = 1  # diagonal contacts do not join (8-connectivity would)
    lab[5, 5] = 1
    assert _shape(lab)["AreaShape_EulerNumber"][0] == 2
    two_holes = np.zeros((12, 20), np.int32)
    two_holes[1:11, 1:19] = 1
    two_holes[4:7, 4:7] = 0
    two_holes[4:7, 12:15] = 0
    assert _shape(two_holes)["AreaShape_EulerNumber"][0] == -1


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_regionprops(seed):
    lab = _blobs(seed)
    f = _shape(lab)
    props = regionprops_table(
        lab,
        properties=(
            "label", "area", "perimeter", "area_convex", "solidity", "euler_number", "extent",
            "axis_major_length", "axis_minor_length", "eccentricity", "orientation",
            "centroid", "bbox", "area_bbox", "equivalent_diameter_area",
        ),
    )  # fmt: skip
    rows = props["label"] - 1
    pairs = {
        "Area": "area",
        "Perimeter": "perimeter",
        "ConvexArea": "area_convex",
        "Solidity": "solidity",
        "EulerNumber": "euler_number",
        "Extent": "extent",
        "MajorAxisLength": "axis_major_length",
        "MinorAxisLength": "axis_minor_length",
        "Eccentricity": "eccentricity",
        "Center_X": "centroid-1",
        "Center_Y": "centroid-0",
        "BoundingBoxMinimum_X": "bbox-1",
        "BoundingBoxMinimum_Y": "bbox-0",
        "BoundingBoxMaximum_X": "bbox-3",
        "BoundingBoxMaximum_Y": "bbox-2",
        "BoundingBoxArea": "area_bbox",
        "EquivalentDiameter": "equivalent_diameter_area",
    }
    for ours, theirs in pairs.items():
        np.testing.assert_allclose(
            f[f"AreaShape_{ours}"][rows], props[theirs], rtol=1e-9, atol=1e-9
        )
    # orientation is defined modulo 180 degrees (+-90 differ by the sign of a zero moment)
    diff = (f["AreaShape_Orientation"][rows] - np.degrees(props["orientation"])) % 180
    assert np.all(np.minimum(diff, 180 - diff) < 1e-7)
    np.testing.assert_allclose(f["Location_Center_X"], f["AreaShape_Center_X"])
    assert np.array_equal(f["Number_Object_Number"], np.arange(1, lab.max() + 1))


def test_radii_match_distance_transform():
    lab = _blobs(2)
    f = _shape(lab)
    for k, box in enumerate(ndi.find_objects(lab), start=1):
        mask = np.pad(lab[box] == k, 1)
        inside = ndi.distance_transform_edt(mask)[mask]
        assert f["AreaShape_MaximumRadius"][k - 1] == pytest.approx(inside.max(), rel=1e-12)
        assert f["AreaShape_MeanRadius"][k - 1] == pytest.approx(inside.mean(), rel=1e-12)
        assert f["AreaShape_MedianRadius"][k - 1] == pytest.approx(np.median(inside), rel=1e-12)


def test_feret_diameters_brute_force():
    lab = _blobs(3)
    f = _shape(lab)
    for k in range(1, lab.max() + 1):
        pts = np.argwhere(lab == k).astype(float)
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
        assert f["AreaShape_MaxFeretDiameter"][k - 1] == pytest.approx(d.max())
        try:
            hull = pts[ConvexHull(pts).vertices]
        except Exception:  # collinear pixels: zero width
            assert f["AreaShape_MinFeretDiameter"][k - 1] == 0
            continue
        widths = []
        for a, b in zip(hull, np.roll(hull, -1, axis=0), strict=True):
            e = (b - a) / np.linalg.norm(b - a)
            widths.append(np.abs((hull - a) @ np.array([-e[1], e[0]])).max())
        assert f["AreaShape_MinFeretDiameter"][k - 1] == pytest.approx(min(widths))


def _enclosing_circle(pts: np.ndarray) -> tuple[np.ndarray, float]:
    """Smallest circle over all pairs and triples of ``pts`` that contains them all."""
    best = (pts[0], np.inf)
    cands = []
    for a, b in itertools.combinations(range(len(pts)), 2):
        cands.append(((pts[a] + pts[b]) / 2, np.linalg.norm(pts[a] - pts[b]) / 2))
    for a, b, c in itertools.combinations(range(len(pts)), 3):
        (ax, ay), (bx, by), (cx, cy) = pts[a], pts[b], pts[c]
        d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
        if d == 0:
            continue
        ux = (
            (ax**2 + ay**2) * (by - cy) + (bx**2 + by**2) * (cy - ay) + (cx**2 + cy**2) * (ay - by)
        ) / d
        uy = (
            (ax**2 + ay**2) * (cx - bx) + (bx**2 + by**2) * (ax - cx) + (cx**2 + cy**2) * (bx - ax)
        ) / d
        centre = np.array([ux, uy])
        cands.append((centre, np.linalg.norm(pts[a] - centre)))
    for centre, radius in cands:
        if radius < best[1] and np.all(np.linalg.norm(pts - centre, axis=1) <= radius + 1e-9):
            best = (centre, radius)
    return best


def test_zernike_direct_sum():
    lab = np.zeros((16, 18), np.int32)
    lab[2:7, 3:9] = 1
    lab[7:9, 4:6] = 1
    lab[10:14, 9:16] = 2
    lab[12, 8] = 2
    f = _shape(lab)
    pairs = zernike_indexes(9)
    for k in (1, 2):
        pts = np.argwhere(lab == k).astype(float)
        hull = pts[ConvexHull(pts).vertices]
        centre, radius = _enclosing_circle(hull)
        y = (pts[:, 0] - centre[0]) / radius
        x = (pts[:, 1] - centre[1]) / radius
        rho, theta = np.hypot(x, y), np.arctan2(x, y)  # centrosome: z = y + i x
        terms = []
        for zn, zm in pairs:
            radial = sum(
                (-1) ** s * math.factorial(zn - s)
                / (math.factorial(s) * math.factorial((zn + zm) // 2 - s) * math.factorial((zn - zm) // 2 - s))
                * rho ** (zn - 2 * s)
                for s in range((zn - zm) // 2 + 1)
            )  # fmt: skip
            terms.append(radial * np.exp(1j * zm * theta) / (math.pi * radius**2))
        terms = np.array(terms)  # (K, pixels)
        ours = np.array([f[f"AreaShape_Zernike_{zn}_{zm}"][k - 1] for zn, zm in pairs])
        # Pixels on the circle are kept or dropped by round-off in CellProfiler's r^2 > 1 test;
        # ours must equal the sum over the inside pixels and some subset of those.
        inside = rho < 1 - 1e-9
        on_circle = np.flatnonzero(np.abs(rho - 1) <= 1e-9)
        assert 2 <= len(on_circle) <= 6
        matches = []
        for size in range(len(on_circle) + 1):
            for subset in itertools.combinations(on_circle, size):
                keep = inside.copy()
                keep[list(subset)] = True
                matches.append(np.allclose(np.abs(terms[:, keep].sum(axis=1)), ours, atol=1e-9))
        assert any(matches)


def test_zernike_degree_option():
    lab = _disc(6, 21)
    assert sum(k.startswith("AreaShape_Zernike_") for k in _shape(lab)) == 30
    f = _shape(lab, zernike_degree=4)
    assert [k for k in f if "Zernike" in k] == [
        f"AreaShape_Zernike_{n}_{m}" for n, m in [(0, 0), (1, 1), (2, 0), (2, 2), (3, 1), (3, 3), (4, 0), (4, 2), (4, 4)]
    ]  # fmt: skip
    with pytest.raises(ValueError, match="zernike_degree"):
        _shape(lab, zernike_degree=-1)


def test_permutation_invariance():
    lab = _blobs(4)
    n = int(lab.max())
    perm = np.random.default_rng(0).permutation(n) + 1  # old label k -> new label perm[k-1]
    lut = np.concatenate([[0], perm]).astype(np.int32)
    f = _shape(lab)
    g = _shape(lut[lab])
    for key, values in f.items():
        if key == "Number_Object_Number":
            continue
        # equal up to the order of floating-point sums over an object's pixels (Zernike
        # moments are sums of products, accumulated per label)
        np.testing.assert_allclose(g[key][perm - 1], values, rtol=1e-12, atol=1e-15, err_msg=key)


def test_border_objects_equal_their_interior_copies():
    shape_ = _blobs(5)[:30, :30] == 3
    inner = np.zeros((60, 60), np.int32)
    inner[15:45, 15:45] = shape_
    corner = np.zeros((60, 60), np.int32)
    corner[:30, :30] = shape_
    ys, xs = np.nonzero(shape_)
    corner = np.roll(corner, (-ys.min(), -xs.min()), axis=(0, 1))  # touches top and left edges
    f, g = _shape(inner, 1), _shape(corner, 1)
    moved = ("Center", "BoundingBoxM", "Location")
    for key in f:
        if not any(m in key for m in moved):
            np.testing.assert_allclose(g[key], f[key], rtol=1e-12, atol=1e-12, err_msg=key)
    assert (
        g["AreaShape_BoundingBoxMinimum_X"][0] == 0 and g["AreaShape_BoundingBoxMinimum_Y"][0] == 0
    )


def test_tiny_objects():
    lab = np.zeros((10, 12), np.int32)
    lab[1, 1] = 1  # one pixel
    lab[4, 2:4] = 2  # two pixels
    lab[7, 1:9] = 3  # a line
    f = _shape(lab)
    assert np.array_equal(f["AreaShape_Area"], [1, 2, 8])
    assert f["AreaShape_Perimeter"][0] == 0 and np.isnan(f["AreaShape_FormFactor"][0])
    assert np.isnan(f["AreaShape_Zernike_0_0"][0])  # the enclosing circle has radius 0
    assert np.array_equal(f["AreaShape_MaximumRadius"], [1, 1, 1])
    assert np.array_equal(f["AreaShape_MinFeretDiameter"], [0, 0, 0])
    assert np.array_equal(f["AreaShape_MaxFeretDiameter"], [0, 1, 7])
    assert np.array_equal(f["AreaShape_ConvexArea"], [1, 2, 8])
    assert np.all(np.isfinite(f["AreaShape_Zernike_0_0"][1:]))


def test_absent_objects_are_nan_and_empty_fields():
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 1
    lab[10:15, 10:15] = 3
    f = _shape(lab, n=4)
    for key, values in f.items():
        assert values.shape == (4,) and values.dtype == np.float64
        assert np.all(np.isnan(values[[1, 3]])), key
        assert np.all(np.isfinite(values[[0, 2]])), key
    empty = _shape(np.zeros((8, 8), np.int32), n=0)
    assert len(empty) == len(SHAPE_FEATURES) + 30 + 3
    assert all(v.shape == (0,) for v in empty.values())
    assert all(np.isnan(v).all() for v in _shape(np.zeros((8, 8), np.int32), n=2).values())


def test_compartments_names_order_and_purity():
    cells = _blobs(6)
    nuclei = np.where(ndi.binary_erosion(cells > 0, iterations=3), cells, 0).astype(np.int32)
    cyto = np.where(nuclei > 0, 0, cells).astype(np.int32)
    comps = {"Cytoplasm": cyto, "Nuclei": nuclei, "Cells": cells}
    copies = {k: v.copy() for k, v in comps.items()}
    n = int(cells.max())
    image = np.zeros((1, *cells.shape), np.float32)
    out = measure_shape(image, comps, n, ["DNA"])
    again = measure_shape(image, comps, n, ["DNA"])
    names = list(out)
    per = len(SHAPE_FEATURES) + 30 + 3
    assert len(names) == 3 * per
    assert [k.split("_")[0] for k in names[::per]] == ["Cells", "Nuclei", "Cytoplasm"]
    assert names[:3] == [
        "Cells_AreaShape_Area",
        "Cells_AreaShape_Perimeter",
        "Cells_AreaShape_FormFactor",
    ]
    assert names[per - 3 : per] == [
        "Cells_Location_Center_X",
        "Cells_Location_Center_Y",
        "Cells_Number_Object_Number",
    ]
    assert names == list(again)
    assert all(np.array_equal(out[k], again[k], equal_nan=True) for k in out)
    assert all(np.array_equal(comps[k], copies[k]) for k in comps)
    with pytest.raises(ValueError):
        measure_shape(image, {"Cells": cells}, n - 1, ["DNA"])


def test_advanced_moments():
    lab = _blobs(7)
    f = _shape(lab, advanced=True)
    props = regionprops_table(
        lab, properties=("moments", "moments_central", "moments_hu", "inertia_tensor_eigvals")
    )
    np.testing.assert_allclose(f["AreaShape_SpatialMoment_0_0"], f["AreaShape_Area"])
    for p in range(3):
        for q in range(4):
            np.testing.assert_allclose(
                f[f"AreaShape_SpatialMoment_{p}_{q}"], props[f"moments-{p}-{q}"], rtol=1e-9
            )
            np.testing.assert_allclose(
                f[f"AreaShape_CentralMoment_{p}_{q}"],
                props[f"moments_central-{p}-{q}"],
                rtol=1e-6,
                atol=1e-6,
            )
    for t in range(7):
        np.testing.assert_allclose(
            f[f"AreaShape_HuMoment_{t}"], props[f"moments_hu-{t}"], rtol=1e-6, atol=1e-12
        )
    np.testing.assert_allclose(
        f["AreaShape_InertiaTensorEigenvalues_0"], props["inertia_tensor_eigvals-0"], rtol=1e-9
    )
    assert np.isnan(f["AreaShape_NormalizedMoment_0_0"]).all()
    assert "AreaShape_HuMoment_0" not in _shape(lab)
