"""Haralick texture features (CellProfiler MeasureTexture) against known answers and a naive
re-implementation of mahotas' definitions (dense co-occurrence matrix per object crop)."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.features.texture import DIRECTIONS, HARALICK_FEATURES, measure_texture, quantise


def _entropy(p: np.ndarray) -> float:
    p = p.ravel()
    return float(-np.dot(np.log2(p + (p == 0)), p))


def naive_haralick(f: np.ndarray, distance: int) -> np.ndarray:
    """mahotas.features.haralick(f, ignore_zeros=True, distance=distance), shape (4, 13)."""
    maxv = int(f.max()) + 1
    height, width = f.shape
    out = np.empty((4, 13))
    k = np.arange(maxv)
    i, j = np.mgrid[:maxv, :maxv]
    for d, (dy, dx) in enumerate(DIRECTIONS):
        cmat = np.zeros((maxv, maxv))
        for y in range(height):
            for x in range(width):
                y2, x2 = y + dy * distance, x + dx * distance
                if 0 <= y2 < height and 0 <= x2 < width:
                    cmat[f[y, x], f[y2, x2]] += 1
                    cmat[f[y2, x2], f[y, x]] += 1
        cmat[0] = 0
        cmat[:, 0] = 0
        if cmat.sum() == 0:
            return np.full((4, 13), np.nan)
        p = cmat / cmat.sum()
        px, py = p.sum(0), p.sum(1)
        ux, uy = px @ k, py @ k
        vx, vy = px @ k**2 - ux**2, py @ k**2 - uy**2
        plus = np.bincount((i + j).ravel(), p.ravel(), minlength=2 * maxv)
        minus = np.bincount(np.abs(i - j).ravel(), p.ravel(), minlength=maxv)
        sx, sy = np.sqrt(vx), np.sqrt(vy)
        tk = np.arange(2 * maxv)
        h = _entropy(p)
        hx, hy = _entropy(px), _entropy(py)
        cross = np.outer(px, py)
        cross += cross == 0
        hxy1 = -np.sum(p * np.log2(cross))
        hxy2 = _entropy(cross)
        out[d] = [
            np.sum(p * p),
            k**2 @ minus,
            1.0 if sx == 0 or sy == 0 else (np.sum(i * j * p) - ux * uy) / sx / sy,
            vx,
            np.sum(p / (1 + (i - j) ** 2)),
            tk @ plus,
            tk**2 @ plus - (tk @ plus) ** 2,
            _entropy(plus),
            h,
            minus.var(),
            _entropy(minus),
            (h - hxy1) / max(hx, hy) if max(hx, hy) > 0 else h - hxy1,
            np.sqrt(max(0.0, 1 - np.exp(-2 * (hxy2 - h)))),
        ]
    return out


def naive_texture(image, labels, n, distance, gray_levels=256) -> np.ndarray:
    """(C, 4, 13, n) features from the object crops, like CellProfiler via regionprops."""
    q = quantise(image, gray_levels)
    out = np.full((image.shape[0], 4, 13, n), np.nan)
    for lab in range(1, n + 1):
        ys, xs = np.nonzero(labels == lab)
        if ys.size == 0:
            continue
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        inside = labels[box] == lab
        for c in range(image.shape[0]):
            out[c, :, :, lab - 1] = naive_haralick(np.where(inside, q[c][box], 0), distance)
    return out


def column(features, comp, feat, ch, scale, d, levels=256):
    return features[f"{comp}_Texture_{feat}_{ch}_{scale}_{d:02d}_{levels}"]


def random_scene(seed: int, shape=(40, 48), n=6):
    """Random blobs (one touching two borders, one absent) on a random 2-channel image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for lab in range(1, n + 1):
        if lab == 3:
            continue  # absent
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        if lab == 1:
            cy, cx = 0, 0
        r = rng.integers(4, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = lab
    image = (rng.random((2, *shape)) * np.array([0.05, 0.9])[:, None, None]).astype(np.float32)
    return image, labels


def test_uniform_object_known_values():
    image = np.zeros((1, 20, 20), np.float32)
    labels = np.zeros((20, 20), np.int32)
    labels[4:14, 5:15] = 1
    image[0, 4:14, 5:15] = 0.5  # quantises to 128
    f = measure_texture(image, {"Cells": labels}, 1, ["DNA"], scales=(3,))
    for d in range(4):
        assert column(f, "Cells", "AngularSecondMoment", "DNA", 3, d)[0] == 1.0
        assert column(f, "Cells", "Contrast", "DNA", 3, d)[0] == 0.0
        assert column(f, "Cells", "Entropy", "DNA", 3, d)[0] == 0.0
        assert column(f, "Cells", "Correlation", "DNA", 3, d)[0] == 1.0
        assert column(f, "Cells", "Variance", "DNA", 3, d)[0] == 0.0
        assert column(f, "Cells", "InverseDifferenceMoment", "DNA", 3, d)[0] == 1.0
        assert column(f, "Cells", "SumAverage", "DNA", 3, d)[0] == 256.0
        assert column(f, "Cells", "InfoMeas1", "DNA", 3, d)[0] == 0.0
        assert column(f, "Cells", "InfoMeas2", "DNA", 3, d)[0] == 0.0


def test_checkerboard_contrast():
    yy, xx = np.mgrid[:16, :16]
    board = np.where((yy + xx) % 2 == 0, 0.2, 0.8).astype(np.float32)  # levels 51 and 204
    labels = np.ones((16, 16), np.int32)
    f = measure_texture(board[None], {"Cells": labels}, 1, ["DNA"], scales=(1,))
    # Directions 00 (0, 1) and 02 (1, 0) always join unlike squares: maximal contrast.
    for d in (0, 2):
        assert column(f, "Cells", "Contrast", "DNA", 1, d)[0] == (204 - 51) ** 2
        assert column(f, "Cells", "AngularSecondMoment", "DNA", 1, d)[0] == 0.5
        assert column(f, "Cells", "Entropy", "DNA", 1, d)[0] == pytest.approx(1.0)
        assert column(f, "Cells", "Correlation", "DNA", 1, d)[0] == pytest.approx(-1.0)
    # The diagonals 01 (1, 1) and 03 (1, -1) join like squares.
    for d in (1, 3):
        assert column(f, "Cells", "Contrast", "DNA", 1, d)[0] == 0.0
        assert column(f, "Cells", "Correlation", "DNA", 1, d)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1, 3])
def test_matches_naive_definitions(seed, scale):
    image, labels = random_scene(seed)
    n = 6
    f = measure_texture(image, {"Cells": labels}, n, ["A", "B"], scales=(scale,))
    expected = naive_texture(image, labels, n, scale)
    for c, ch in enumerate(["A", "B"]):
        for d in range(4):
            for fi, feat in enumerate(HARALICK_FEATURES):
                np.testing.assert_allclose(
                    column(f, "Cells", feat, ch, scale, d),
                    expected[c, d, fi],
                    rtol=1e-9,
                    atol=1e-9,
                    err_msg=f"{feat} {ch} {d}",
                )
    assert np.isnan(column(f, "Cells", "Contrast", "A", scale, 0)[2])  # absent object


def test_gray_levels_and_quantisation():
    values = np.array([-0.1, 0.0, 0.001, 0.002, 0.5, 0.999, 1.0, 1.5], np.float32)
    assert quantise(values).tolist() == [0, 0, 0, 1, 128, 255, 255, 255]
    assert quantise(values, 8).tolist() == [0, 0, 0, 0, 3, 7, 7, 7]
    image, labels = random_scene(2)
    f = measure_texture(image, {"Cells": labels}, 6, ["A", "B"], scales=(2,), gray_levels=8)
    expected = naive_texture(image, labels, 6, 2, gray_levels=8)
    np.testing.assert_allclose(
        column(f, "Cells", "Entropy", "B", 2, 1, levels=8), expected[1, 1, 8], atol=1e-12
    )


def test_no_pairs_in_one_direction_gives_nan():
    image = np.full((1, 10, 10), 0.5, np.float32)
    labels = np.zeros((10, 10), np.int32)
    labels[2:8, 4] = 1  # a vertical line: no horizontal pair
    labels[2:6, 6:9] = 2
    f = measure_texture(image, {"Cells": labels}, 2, ["DNA"], scales=(1,))
    for d in range(4):
        assert np.isnan(column(f, "Cells", "Contrast", "DNA", 1, d)[0])
        assert column(f, "Cells", "Contrast", "DNA", 1, d)[1] == 0.0
    # Pixels quantising to 0 are ignored as background.
    dark = np.where(labels == 2, 0.001, 0.5).astype(np.float32)[None]
    f = measure_texture(dark, {"Cells": labels}, 2, ["DNA"], scales=(1,))
    assert np.isnan(column(f, "Cells", "Entropy", "DNA", 1, 2)[1])


def test_relabelling_permutes_rows():
    image, labels = random_scene(3)
    n = 6
    perm = np.array([0, 4, 6, 1, 3, 2, 5])  # old label -> new label (0 stays 0)
    f = measure_texture(image, {"Cells": labels}, n, ["A", "B"])
    g = measure_texture(image, {"Cells": perm[labels]}, n, ["A", "B"])
    for key in f:
        np.testing.assert_array_equal(g[key][perm[1:] - 1], f[key])


def test_border_objects_match_naive():
    image, labels = random_scene(4)
    labels[:, -3:] = 7  # a strip along the right border
    labels[-2:, :] = 8  # and one along the bottom
    f = measure_texture(image, {"Cells": labels}, 8, ["A", "B"], scales=(1,))
    expected = naive_texture(image, labels, 8, 1)
    for d in range(4):
        np.testing.assert_allclose(
            column(f, "Cells", "SumVariance", "B", 1, d), expected[1, d, 6], rtol=1e-9
        )


def test_names_order_shapes_empty_and_purity():
    image, labels = random_scene(5)
    comps = {"Cells": labels, "Nuclei": np.where(labels % 2 == 1, labels, 0)}
    before = image.copy(), labels.copy()
    f = measure_texture(image, comps, 6, ["A", "B"], scales=(1, 3))
    assert len(f) == 2 * 13 * 2 * 2 * 4
    assert list(f)[:3] == [
        "Cells_Texture_AngularSecondMoment_A_1_00_256",
        "Cells_Texture_AngularSecondMoment_A_1_01_256",
        "Cells_Texture_AngularSecondMoment_A_1_02_256",
    ]
    assert all(v.shape == (6,) and v.dtype == np.float64 for v in f.values())
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])
    g = measure_texture(image, comps, 6, ["A", "B"], scales=(1, 3))
    assert all(np.array_equal(f[k], g[k], equal_nan=True) for k in f)
    empty = measure_texture(image, {"Cells": np.zeros_like(labels)}, 0, ["A", "B"])
    assert len(empty) == 13 * 2 * 4 and all(v.shape == (0,) for v in empty.values())


def test_bad_arguments():
    image, labels = random_scene(6)
    with pytest.raises(ValueError):
        measure_texture(image, {"Cells": labels}, 6, ["A", "B"], gray_levels=1)
    with pytest.raises(ValueError):
        measure_texture(image, {"Cells": labels}, 6, ["A", "B"], scales=(0,))
    with pytest.raises(ValueError):
        measure_texture(image, {"Cells": labels}, 6, ["A"])
    with pytest.raises(ValueError):
        measure_texture(image, {"Cells": labels}, 2, ["A", "B"])
