"""Colocalisation features (CellProfiler MeasureColocalization) against known answers and a
naive per-object implementation of the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.features.correlation import measure_correlation


def dense_ranks(values: np.ndarray) -> np.ndarray:
    """0 for the lowest value, equal values share a rank."""
    return np.unique(values, return_inverse=True)[1].ravel()


def naive_object(a: np.ndarray, b: np.ndarray, thr: float = 15.0, ra=None, rb=None, r=None):
    """The per-object definitions (cp_measure), one object's pixel values a, b."""
    a32, b32 = a, b
    a, b = a.astype(np.float64), b.astype(np.float64)
    x, y = a - a.mean(), b - b.mean()
    out = {
        "Correlation": np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)),
        "Slope": np.sum(x * y) / np.sum(x * x),
    }
    # Thresholds and comparisons in float32, like CellProfiler on float32 images.
    ta = np.float32(thr / 100) * a32.max()
    tb = np.float32(thr / 100) * b32.max()
    col = (a32 >= ta) & (b32 >= tb)
    above_a, above_b = a32 >= ta, b32 >= tb
    if ra is None:
        ra, rb = dense_ranks(a), dense_ranks(b)
        r = max(ra.max(), rb.max()) + 1
    w = (r - np.abs(ra - rb)) / r
    ac, bc = a[col], b[col]
    if not col.any():
        out.update(Overlap=0.0, K_AB=0.0, K_BA=0.0, M_AB=0.0, M_BA=0.0, R_AB=0.0, R_BA=0.0)
        return out
    out["Overlap"] = np.sum(ac * bc) / np.sqrt(np.sum(ac**2) * np.sum(bc**2))
    out["K_AB"] = np.sum(ac * bc) / np.sum(ac**2)
    out["K_BA"] = np.sum(ac * bc) / np.sum(bc**2)
    out["M_AB"] = ac.sum() / a[above_a].sum()
    out["M_BA"] = bc.sum() / b[above_b].sum()
    out["R_AB"] = np.sum(ac * w[col]) / a[above_a].sum()
    out["R_BA"] = np.sum(bc * w[col]) / b[above_b].sum()
    return out


NAMES = {
    "Correlation": "Correlation_{a}_{b}",
    "Slope": "Slope_{a}_{b}",
    "Overlap": "Overlap_{a}_{b}",
    "K_AB": "K_{a}_{b}",
    "K_BA": "K_{b}_{a}",
    "M_AB": "Manders_{a}_{b}",
    "M_BA": "Manders_{b}_{a}",
    "R_AB": "RWC_{a}_{b}",
    "R_BA": "RWC_{b}_{a}",
}


def col(f, comp, key, a, b):
    return f[f"{comp}_Correlation_" + NAMES[key].format(a=a, b=b)]


def random_scene(seed: int, shape=(48, 56), n=7):
    """Random discs (one on the border, label 3 absent) on a random 3-channel image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for lab in range(1, n + 1):
        if lab == 3:
            continue
        cy, cx = (0, 0) if lab == 1 else (rng.integers(0, shape[0]), rng.integers(0, shape[1]))
        r = rng.integers(3, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = lab
    a = rng.random(shape)
    image = np.stack([a, 0.5 * a + 0.5 * rng.random(shape), rng.random(shape) ** 3])
    # Quantise to a 16-bit grid, as real images, so that ties occur in the ranks.
    image = (np.round(image * 0.2 * 4095) / 65535).astype(np.float32)
    return image, labels


def test_known_pearson_and_slope():
    rng = np.random.default_rng(0)
    labels = np.zeros((30, 30), np.int32)
    labels[2:14, 2:28] = 1
    labels[16:29, 5:20] = 2
    a = rng.random((30, 30))
    b = 2 * a + 0.3 * rng.standard_normal((30, 30))
    image = np.stack([a, b]).astype(np.float32)
    f = measure_correlation(image, {"Cells": labels}, 2, ["A", "B"])
    for lab in (1, 2):
        x, y = image[0][labels == lab].astype(float), image[1][labels == lab].astype(float)
        r = np.corrcoef(x, y)[0, 1]
        assert 0.8 < r < 0.95
        assert col(f, "Cells", "Correlation", "A", "B")[lab - 1] == pytest.approx(r, rel=1e-9)
        slope = np.polyfit(x, y, 1)[0]
        assert col(f, "Cells", "Slope", "A", "B")[lab - 1] == pytest.approx(slope, rel=1e-9)


def test_identical_channels():
    image, labels = random_scene(1)
    same = np.stack([image[0], image[0]])
    f = measure_correlation(same, {"Cells": labels}, 7, ["A", "B"], costes=True)
    present = np.bincount(labels.ravel(), minlength=8)[1:] > 0
    for key in NAMES:
        values = col(f, "Cells", key, "A", "B")
        np.testing.assert_allclose(values[present], 1.0, rtol=1e-12, err_msg=key)
        assert np.isnan(values[~present]).all()
    # Costes' search is degenerate here (the background stays perfectly correlated down to
    # the last threshold with 3 pixels below it): undefined, as in cp_measure.
    assert np.isnan(f["Cells_Correlation_Costes_A_B"]).all()


@pytest.mark.parametrize("seed", [2, 3])
def test_matches_naive_definitions(seed):
    image, labels = random_scene(seed)
    names = ["A", "B", "C"]
    f = measure_correlation(image, {"Cells": labels}, 7, names, manders_threshold=30.0)
    for lab in range(1, 8):
        m = labels == lab
        for i, j in [(0, 1), (0, 2), (1, 2)]:
            if not m.any():
                assert all(np.isnan(col(f, "Cells", k, names[i], names[j])[lab - 1]) for k in NAMES)
                continue
            expected = naive_object(image[i][m], image[j][m], 30.0)
            for key, value in expected.items():
                got = col(f, "Cells", key, names[i], names[j])[lab - 1]
                assert got == pytest.approx(value, rel=1e-6), (lab, i, j, key)


def test_image_wide_ranks_like_cellprofiler4():
    image, labels = random_scene(4)
    f = measure_correlation(image, {"Cells": labels}, 7, ["A", "B", "C"], rwc_ranks="image")
    inside = labels > 0
    ra = np.zeros(labels.shape, np.int64)
    rb = np.zeros(labels.shape, np.int64)
    ra[inside] = dense_ranks(image[0][inside])
    rb[inside] = dense_ranks(image[2][inside])
    r = max(ra.max(), rb.max()) + 1
    for lab in (1, 2, 5):
        m = labels == lab
        expected = naive_object(image[0][m], image[2][m], 15.0, ra[m], rb[m], r)
        for key in ("R_AB", "R_BA"):
            got = col(f, "Cells", key, "A", "C")[lab - 1]
            assert got == pytest.approx(expected[key], rel=1e-6)


def test_edge_cases_constant_and_dark_objects():
    image = np.zeros((2, 12, 12), np.float32)
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5] = 1  # channel A constant
    image[0, 1:5, 1:5] = 0.3
    image[1, 1:5, 1:5] = np.linspace(0.1, 0.2, 16).reshape(4, 4)
    labels[7:11, 7:11] = 2  # channel B dark except one pixel, A bright only elsewhere
    image[0, 7:11, 7:11] = 0.5
    image[0, 7, 7] = 0.0
    image[1, 7, 7] = 0.4
    f = measure_correlation(image, {"Cells": labels}, 2, ["A", "B"])
    assert np.isnan(col(f, "Cells", "Correlation", "A", "B")[0])
    assert np.isnan(col(f, "Cells", "Slope", "A", "B")[0])
    assert col(f, "Cells", "M_AB", "A", "B")[0] == pytest.approx(1.0)
    # No pixel above both thresholds: 0, CellProfiler's convention.
    assert col(f, "Cells", "M_AB", "A", "B")[1] == 0.0
    assert col(f, "Cells", "Overlap", "A", "B")[1] == 0.0
    assert col(f, "Cells", "R_BA", "A", "B")[1] == 0.0


def test_relabelling_permutes_rows_and_border_objects():
    image, labels = random_scene(5)
    labels[:, -2:] = 6  # a strip on the right border
    perm = np.array([0, 3, 7, 1, 2, 6, 5, 4])
    names = ["A", "B", "C"]
    f = measure_correlation(image, {"Cells": labels}, 7, names, costes=True)
    g = measure_correlation(image, {"Cells": perm[labels]}, 7, names, costes=True)
    for key in f:
        np.testing.assert_array_equal(g[key][perm[1:] - 1], f[key])
    m = labels == 6
    expected = naive_object(image[1][m], image[2][m])
    assert col(f, "Cells", "Correlation", "B", "C")[5] == pytest.approx(expected["Correlation"])


def test_names_order_shapes_empty_and_purity():
    image, labels = random_scene(6)
    comps = {"Cells": labels, "Nuclei": np.where(labels % 2 == 1, labels, 0)}
    before = image.copy(), labels.copy()
    f = measure_correlation(image, comps, 7, ["A", "B", "C"])
    assert len(f) == 2 * 3 * 9
    assert list(f)[:4] == [
        "Cells_Correlation_Correlation_A_B",
        "Cells_Correlation_Correlation_A_C",
        "Cells_Correlation_Correlation_B_C",
        "Cells_Correlation_Slope_A_B",
    ]
    assert "Nuclei_Correlation_K_C_B" in f and "Nuclei_Correlation_Costes_A_B" not in f
    assert all(v.shape == (7,) and v.dtype == np.float64 for v in f.values())
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(labels, before[1])
    g = measure_correlation(image, comps, 7, ["A", "B", "C"])
    assert all(np.array_equal(f[k], g[k], equal_nan=True) for k in f)
    h = measure_correlation(image, comps, 7, ["A", "B", "C"], costes=True)
    assert len(h) == 2 * 3 * 11
    costes = h["Cells_Correlation_Costes_A_B"]
    assert np.all((costes[~np.isnan(costes)] >= 0) & (costes[~np.isnan(costes)] <= 1))
    empty = measure_correlation(image, {"Cells": np.zeros_like(labels)}, 0, ["A", "B", "C"])
    assert len(empty) == 3 * 9 and all(v.shape == (0,) for v in empty.values())
    single = measure_correlation(image[:1], {"Cells": labels}, 7, ["A"])
    assert single == {}


def test_bad_arguments():
    image, labels = random_scene(7)
    with pytest.raises(ValueError):
        measure_correlation(image, {"Cells": labels}, 7, ["A", "B", "C"], manders_threshold=150)
    with pytest.raises(ValueError):
        measure_correlation(image, {"Cells": labels}, 7, ["A", "B", "C"], rwc_ranks="cells")
    with pytest.raises(ValueError):
        measure_correlation(image, {"Cells": labels}, 7, ["A", "B"])
