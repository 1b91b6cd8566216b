"""Known answers for hcsflow.features.radial (CellProfiler MeasureObjectIntensityDistribution)."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
import scipy.ndimage as ndi

from hcsflow.features.radial import (
    RADIAL_FEATURES,
    distance_to_edge,
    geodesic_from_centres,
    measure_radial,
)


def _dijkstra(mask: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """8-connected geodesic distance inside ``mask``, steps 1 / sqrt(2) (centrosome.propagate)."""
    d = np.full(mask.shape, np.inf)
    d[start] = 0.0
    heap = [(0.0, start)]
    while heap:
        dist, (i, j) = heapq.heappop(heap)
        if dist > d[i, j]:
            continue
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                y, x = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]):
                    continue
                if not mask[y, x]:
                    continue
                nd = dist + np.sqrt(float(abs(di) + abs(dj)))
                if nd < d[y, x]:
                    d[y, x] = nd
                    heapq.heappush(heap, (nd, (y, x)))
    return d


def _brute_force(img: np.ndarray, labels: np.ndarray, n: int, bins: int = 4) -> dict:
    """CellProfiler's algorithm object by object, with scipy's EDT and a heap Dijkstra."""
    out = {f: np.full((n, bins), np.nan) for f in RADIAL_FEATURES}
    yy, xx = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]]
    for k in range(1, n + 1):
        m = labels == k
        if not m.any():
            continue
        d_edge = ndi.distance_transform_edt(m)
        ci, cj = np.unravel_index(np.argmax(np.where(m, d_edge, -1)), m.shape)
        d_c = _dijkstra(m, (ci, cj))
        good = m & np.isfinite(d_c)
        r = d_c[good] / (d_c[good] + d_edge[good] + 0.001)
        b = np.minimum((r * bins).astype(int), bins)
        v = img[good].astype(np.float64)
        di, dj = yy[good] - ci, xx[good] - cj
        wedge = (di > 0) + 2 * (dj > 0) + 4 * (np.abs(di) > np.abs(dj))
        for i in range(bins):
            frac = v[b == i].sum() / v.sum()
            out["FracAtD"][k - 1, i] = frac
            out["MeanFrac"][k - 1, i] = frac / ((b == i).sum() / b.size + np.finfo(float).eps)
            means = [
                v[(b == i) & (wedge == w)].mean()
                for w in range(8)
                if ((b == i) & (wedge == w)).any()
            ]
            if not means:
                out["RadialCV"][k - 1, i] = 0.0
            else:
                mu = np.mean(means)
                out["RadialCV"][k - 1, i] = np.std(means) / mu if mu != 0 else np.std(means)
    return out


def _get(out: dict, feature: str, comp="Cells", ch="DNA", bins=4) -> np.ndarray:
    return np.stack(
        [out[f"{comp}_RadialDistribution_{feature}_{ch}_{i}of{bins}"] for i in range(1, bins + 1)],
        axis=1,
    )


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _random_blobs(rng: np.random.Generator, shape=(60, 70), n=6) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):
        c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        labels[_disc(shape, c, rng.integers(3, 12)) & (rng.random(shape) < 0.97)] = k
    labels[20:23, :] = np.where(labels[20:23, :] > 0, 0, labels[20:23, :])  # cut some objects
    return labels


def test_column_names_and_order():
    labels = _disc((30, 30), (15, 15), 8).astype(np.int32)
    img = np.ones((2, 30, 30), dtype=np.float32)
    out = measure_radial(img, {"Cells": labels, "Nuclei": labels}, 1, ["DNA", "ER"], bin_count=3)
    expected = [
        f"{comp}_RadialDistribution_{f}_{ch}_{i}of3"
        for comp in ("Cells", "Nuclei")
        for ch in ("DNA", "ER")
        for f in RADIAL_FEATURES
        for i in (1, 2, 3)
    ]
    assert list(out) == expected


def test_uniform_disc():
    disc = _disc((61, 61), (30, 30), 25)
    labels = disc.astype(np.int32)
    img = np.full((1, 61, 61), 0.5, dtype=np.float32)
    out = measure_radial(img, {"Cells": labels}, 1, ["DNA"])
    frac, mean_frac, cv = (_get(out, f)[0] for f in RADIAL_FEATURES)
    # FracAtD is the share of the pixels in each ring; rings grow outwards
    d_edge = ndi.distance_transform_edt(disc)
    d_c = _dijkstra(disc, (30, 30))
    ring = (d_c[disc] / (d_c[disc] + d_edge[disc] + 0.001) * 4).astype(int)
    np.testing.assert_allclose(frac, np.bincount(ring, minlength=4) / ring.size, rtol=1e-12)
    assert np.all(np.diff(frac) > 0)
    np.testing.assert_allclose(mean_frac, 1.0, rtol=1e-9)
    np.testing.assert_allclose(cv, 0.0, atol=1e-12)


def test_centre_bright_object_decreases_outwards():
    disc = _disc((61, 61), (30, 30), 25)
    yy, xx = np.mgrid[0:61, 0:61]
    img = np.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / (2 * 3.0**2))[None].astype(np.float32)
    out = measure_radial(img, {"Cells": disc.astype(np.int32)}, 1, ["DNA"])
    frac, mean_frac = _get(out, "FracAtD")[0], _get(out, "MeanFrac")[0]
    assert np.all(np.diff(frac) < 0) and np.all(np.diff(mean_frac) < 0)
    assert frac.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = _random_blobs(rng)
    n = int(labels.max()) + 1  # one absent object
    img = rng.random((1, *labels.shape)).astype(np.float32)
    out = measure_radial(img, {"Cells": labels}, n, ["DNA"])
    ref = _brute_force(img[0], labels, n)
    for f in RADIAL_FEATURES:
        np.testing.assert_allclose(_get(out, f), ref[f], rtol=1e-9, atol=1e-12, err_msg=f)


def test_ring_uses_geodesic_distance():
    # A ring (like a cytoplasm): the distance from its centre goes around the hole.
    ring = _disc((41, 41), (20, 20), 18) & ~_disc((41, 41), (20, 20), 9)
    labels = ring.astype(np.int32)
    d_edge = distance_to_edge(labels)
    ci, cj = np.unravel_index(np.argmax(d_edge), d_edge.shape)
    d = geodesic_from_centres(labels, np.array([ci]), np.array([cj]))
    np.testing.assert_allclose(d[ring], _dijkstra(ring, (ci, cj))[ring], rtol=1e-12)
    euclid = np.hypot(*(np.mgrid[0:41, 0:41] - np.array([ci, cj])[:, None, None]))
    assert (d[ring] - euclid[ring]).max() > 10  # the far side is much farther around the ring


def test_distance_to_edge_is_per_object_edt():
    rng = np.random.default_rng(5)
    labels = np.kron(rng.integers(0, 4, (12, 15)), np.ones((3, 2), dtype=np.int64)).astype(np.int32)
    expected = np.zeros(labels.shape)
    for k in range(1, 4):
        m = labels == k
        expected[m] = ndi.distance_transform_edt(m)[m]  # the image border is no edge
    np.testing.assert_array_equal(distance_to_edge(labels), expected)


def test_object_touching_the_border():
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[:12, :15] = 1  # corner object: the image border is not an edge
    labels[5:25, 20:40] = 2
    rng = np.random.default_rng(6)
    img = rng.random((1, 30, 40)).astype(np.float32)
    out = measure_radial(img, {"Cells": labels}, 2, ["DNA"])
    ref = _brute_force(img[0], labels, 2)
    for f in RADIAL_FEATURES:
        np.testing.assert_allclose(_get(out, f), ref[f], rtol=1e-9, atol=1e-12)
    assert distance_to_edge(labels)[0, 0] == 12.0  # to row 12, not to the image border


def test_permutation_invariance():
    rng = np.random.default_rng(8)
    labels = _random_blobs(rng, n=5)
    n = 5
    img = rng.random((1, *labels.shape)).astype(np.float32)
    perm = rng.permutation(n) + 1
    relabelled = np.concatenate([[0], perm])[labels].astype(np.int32)
    a = measure_radial(img, {"Cells": labels}, n, ["DNA"])
    b = measure_radial(img, {"Cells": relabelled}, n, ["DNA"])
    for key in a:
        np.testing.assert_array_equal(b[key][perm - 1], a[key])


def test_absent_objects_zero_intensity_and_empty_field():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:10, 2:10] = 2
    labels[12:18, 12:18] = 3
    img = np.zeros((1, 20, 20), dtype=np.float32)
    img[0, 2:10, 2:10] = 1.0
    out = measure_radial(img, {"Cells": labels}, 3, ["DNA"])
    frac, cv = _get(out, "FracAtD"), _get(out, "RadialCV")
    assert np.isnan(frac[0]).all() and np.isnan(cv[0]).all()  # absent
    assert np.isfinite(frac[1]).all()
    assert np.isnan(frac[2]).all() and (cv[2] == 0).all()  # 0/0 fractions, as in CellProfiler
    empty = measure_radial(img, {"Cells": np.zeros((20, 20), np.int32)}, 0, ["DNA"])
    assert len(empty) == 12 and all(v.shape == (0,) for v in empty.values())


def test_inputs_untouched_deterministic_and_bad_options():
    rng = np.random.default_rng(9)
    labels = _random_blobs(rng)
    img = rng.random((1, *labels.shape)).astype(np.float32)
    img0, lab0 = img.copy(), labels.copy()
    n = int(labels.max())
    a = measure_radial(img, {"Cells": labels}, n, ["DNA"])
    b = measure_radial(img, {"Cells": labels}, n, ["DNA"])
    np.testing.assert_array_equal(img, img0)
    np.testing.assert_array_equal(labels, lab0)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    with pytest.raises(ValueError, match="center"):
        measure_radial(img, {"Cells": labels}, n, ["DNA"], center="Nuclei")
    with pytest.raises(ValueError, match="bin_count"):
        measure_radial(img, {"Cells": labels}, n, ["DNA"], bin_count=0)
