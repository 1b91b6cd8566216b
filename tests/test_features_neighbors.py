"""Tests of hcsflow.features.neighbors: CellProfiler's MeasureObjectNeighbors.

The oracle is a straightforward per-object transcription of CellProfiler 4's module (a
dilation of each object by ``strel_disk(N)``, its outline against the other objects dilated by
``strel_disk(N + 0.5)``, and the closest centroids from a full distance matrix).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from hcsflow.features.neighbors import measure_neighbors

FEATURES = (
    "NumberOfNeighbors",
    "PercentTouching",
    "FirstClosestDistance",
    "FirstClosestObjectNumber",
    "SecondClosestDistance",
    "SecondClosestObjectNumber",
    "AngleBetweenNeighbors",
)


def _neighbors(labels: np.ndarray, n: int | None = None, distance: int = 0) -> dict:
    n = int(labels.max()) if n is None else n
    image = np.zeros((1, *labels.shape), np.float32)
    out = measure_neighbors(image, {"Cells": labels}, n, ["DNA"], distance=distance)
    suffix = "Adjacent" if distance == 0 else str(distance)
    return {f: out[f"Cells_Neighbors_{f}_{suffix}"] for f in FEATURES}


def _disk(radius: float) -> np.ndarray:
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= radius * radius


def _outline(labels: np.ndarray) -> np.ndarray:
    """centrosome.outline: a labelled pixel with an 8-neighbour of another value, or on the edge."""
    padded = np.pad(labels, 1, constant_values=-1)
    h, w = labels.shape
    diff = np.zeros(labels.shape, bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            diff |= padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] != labels
    return np.where(diff, labels, 0)


def _reference(labels: np.ndarray, distance: int) -> dict:
    """CellProfiler's MeasureObjectNeighbors, object by object (labels 1..m, all present)."""
    m = int(labels.max())
    radius = 1 if distance == 0 else distance
    outline = _outline(labels)
    out = {f: np.zeros(m) for f in FEATURES}
    centres = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, np.arange(1, m + 1)))
    for k in range(1, m + 1):
        grown = ndi.binary_dilation(labels == k, _disk(radius))
        found = np.unique(labels[grown])
        out["NumberOfNeighbors"][k - 1] = np.sum((found != 0) & (found != k))
        others = ndi.binary_dilation((labels != 0) & (labels != k), _disk(radius + 0.5))
        edge = outline == k
        out["PercentTouching"][k - 1] = 100.0 * np.sum(edge & others) / np.sum(edge)
    if m > 1:
        dist = np.sqrt(((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
        order = np.lexsort([dist])
        first = order[:, 1]
        v1 = centres[first] - centres
        out["FirstClosestObjectNumber"] = first + 1.0
        out["FirstClosestDistance"] = np.hypot(v1[:, 0], v1[:, 1])
        if m > 2:
            second = order[:, 2]
            v2 = centres[second] - centres
            out["SecondClosestObjectNumber"] = second + 1.0
            out["SecondClosestDistance"] = np.hypot(v2[:, 0], v2[:, 1])
            cos = (v1 * v2).sum(1) / np.sqrt((v1**2).sum(1) * (v2**2).sum(1))
            out["AngleBetweenNeighbors"] = np.degrees(np.arccos(cos))
    else:
        out["NumberOfNeighbors"][:] = 0
        out["PercentTouching"][:] = 0
    return out


def _cells(seed: int, shape: tuple[int, int] = (80, 96), count: int = 25) -> np.ndarray:
    """Touching cell-like objects (a watershed of random seeds inside blobs), labels 1..N."""
    rng = np.random.default_rng(seed)
    fg = ndi.gaussian_filter(rng.standard_normal(shape), 3) > -0.1
    markers = np.zeros(shape, np.int32)
    pts = rng.integers(0, shape, size=(count, 2))
    markers[pts[:, 0], pts[:, 1]] = np.arange(1, count + 1)
    lab = watershed(-ndi.distance_transform_edt(fg), markers, mask=fg)
    _, inverse = np.unique(lab, return_inverse=True)
    return inverse.reshape(shape).astype(np.int32)


@pytest.mark.parametrize(("seed", "distance"), [(0, 0), (1, 0), (2, 2), (3, 6)])
def test_matches_per_object_reference(seed, distance):
    lab = _cells(seed)
    ours = _neighbors(lab, distance=distance)
    ref = _reference(lab, distance)
    for f in FEATURES:
        np.testing.assert_allclose(ours[f], ref[f], rtol=1e-12, atol=1e-9, err_msg=f)


def test_two_touching_squares():
    lab = np.zeros((30, 40), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2
    f = _neighbors(lab)
    assert np.array_equal(f["NumberOfNeighbors"], [1, 1])
    # 36 outline pixels, of which the 10 of the shared column touch the other square
    np.testing.assert_allclose(f["PercentTouching"], [1000 / 36, 1000 / 36])
    np.testing.assert_allclose(f["FirstClosestDistance"], [10, 10])
    assert np.array_equal(f["FirstClosestObjectNumber"], [2, 1])
    # CellProfiler reports 0 for a second neighbour that does not exist
    for name in ("SecondClosestDistance", "SecondClosestObjectNumber", "AngleBetweenNeighbors"):
        assert np.array_equal(f[name], [0, 0])


def test_isolated_object_and_angle():
    lab = np.zeros((100, 100), np.int32)
    lab[49:52, 49:52] = 1  # centre (50, 50)
    lab[49:52, 59:62] = 2  # centre (50, 60): 10 to the right
    lab[69:72, 49:52] = 3  # centre (70, 50): 20 below
    f = _neighbors(lab)
    assert np.array_equal(f["NumberOfNeighbors"], [0, 0, 0])
    assert np.array_equal(f["PercentTouching"], [0, 0, 0])
    assert np.array_equal(f["FirstClosestObjectNumber"], [2, 1, 1])
    np.testing.assert_allclose(f["FirstClosestDistance"], [10, 10, 20])
    assert np.array_equal(f["SecondClosestObjectNumber"], [3, 3, 2])
    np.testing.assert_allclose(f["SecondClosestDistance"], [20, np.hypot(10, 20), np.hypot(10, 20)])
    assert f["AngleBetweenNeighbors"][0] == pytest.approx(90)


def test_within_distance():
    lab = np.zeros((20, 40), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 18:28] = 2  # nearest pixels 4 columns apart (three background columns)
    assert np.array_equal(_neighbors(lab, distance=0)["NumberOfNeighbors"], [0, 0])
    assert np.array_equal(_neighbors(lab, distance=3)["NumberOfNeighbors"], [0, 0])
    near = _neighbors(lab, distance=4)
    assert np.array_equal(near["NumberOfNeighbors"], [1, 1])
    # outline pixels within 4.5 pixels of the other square: the nearest column only
    np.testing.assert_allclose(near["PercentTouching"], [1000 / 36, 1000 / 36])


def test_permutation_invariance():
    lab = _cells(4)
    n = int(lab.max())
    perm = np.random.default_rng(1).permutation(n) + 1
    lut = np.concatenate([[0], perm]).astype(np.int32)
    f = _neighbors(lab, distance=2)
    g = _neighbors(lut[lab], distance=2)
    for name in FEATURES:
        expected = f[name]
        if name.endswith("ObjectNumber"):
            expected = lut[expected.astype(np.int64)]
        np.testing.assert_allclose(g[name][perm - 1], expected, err_msg=name)


def test_border_absent_single_and_empty():
    lab = np.zeros((20, 20), np.int32)
    lab[:5, :5] = 1  # touches the image corner: its edge pixels are outline pixels
    lab[:5, 5:10] = 3
    f = _neighbors(lab, n=4)
    assert np.all(np.isnan(np.stack([f[k][[1, 3]] for k in FEATURES])))
    assert np.array_equal(f["NumberOfNeighbors"][[0, 2]], [1, 1])
    assert np.array_equal(f["FirstClosestObjectNumber"][[0, 2]], [3, 1])
    # 16 outline pixels (image edge included), 5 of them against the other square
    np.testing.assert_allclose(f["PercentTouching"][[0, 2]], [500 / 16, 500 / 16])
    single = np.zeros((10, 10), np.int32)
    single[2:6, 2:6] = 1
    assert all(np.array_equal(v, [0]) for v in _neighbors(single).values())
    empty = _neighbors(np.zeros((6, 6), np.int32), n=0)
    assert all(v.shape == (0,) for v in empty.values())


def test_compartments_names_and_purity():
    cells = _cells(5)
    nuclei = np.where(ndi.binary_erosion(cells > 0, iterations=2), cells, 0).astype(np.int32)
    comps = {"Cytoplasm": np.where(nuclei > 0, 0, cells), "Nuclei": nuclei, "Cells": cells}
    copies = {k: v.copy() for k, v in comps.items()}
    image = np.zeros((1, *cells.shape), np.float32)
    n = int(cells.max())
    out = measure_neighbors(image, comps, n, ["DNA"], distance=3)
    assert list(out) == [f"{c}_Neighbors_{f}_3" for c in ("Cells", "Nuclei") for f in FEATURES]
    again = measure_neighbors(image, comps, n, ["DNA"], distance=3)
    assert all(np.array_equal(out[k], again[k], equal_nan=True) for k in out)
    assert all(np.array_equal(comps[k], copies[k]) for k in comps)
    assert all(v.dtype == np.float64 and v.shape == (n,) for v in out.values())
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="distance"):
            measure_neighbors(image, comps, n, ["DNA"], distance=bad)
