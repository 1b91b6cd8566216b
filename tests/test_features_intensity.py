"""Known answers for hcsflow.features.intensity (CellProfiler MeasureObjectIntensity)."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.features.intensity import (
    INTENSITY_FEATURES,
    LOCATION_FEATURES,
    inner_boundary,
    measure_intensity,
)


def _cp_quantile(sorted_values: np.ndarray, q: float) -> float:
    """CellProfiler's quantile: position n*q, linear interpolation, clamped at the top."""
    n = sorted_values.size
    pos = n * q
    lo = int(np.floor(pos))
    f = pos - lo
    if lo < n - 1:
        return sorted_values[lo] * (1 - f) + sorted_values[lo + 1] * f
    return sorted_values[lo]


def _brute_force(img: np.ndarray, labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Straightforward per-object loop over CellProfiler's definitions (one channel)."""
    h, w = labels.shape
    pad = np.pad(labels, 1, mode="edge")  # the image border is not an edge
    nb_differs = (
        (pad[:-2, 1:-1] != labels)
        | (pad[2:, 1:-1] != labels)
        | (pad[1:-1, :-2] != labels)
        | (pad[1:-1, 2:] != labels)
    )
    edge = nb_differs & (labels > 0)
    yy, xx = np.mgrid[0:h, 0:w]
    out = {f: np.full(n, np.nan) for f in INTENSITY_FEATURES + LOCATION_FEATURES}
    for k in range(1, n + 1):
        m = labels == k
        if not m.any():
            continue
        v = img[m].astype(np.float64)
        e = img[m & edge].astype(np.float64)
        s = np.sort(v)
        out["IntegratedIntensity"][k - 1] = v.sum()
        out["MeanIntensity"][k - 1] = v.mean()
        out["StdIntensity"][k - 1] = v.std()
        out["MinIntensity"][k - 1] = v.min()
        out["MaxIntensity"][k - 1] = v.max()
        out["IntegratedIntensityEdge"][k - 1] = e.sum()
        out["MeanIntensityEdge"][k - 1] = e.mean()
        out["StdIntensityEdge"][k - 1] = e.std()
        out["MinIntensityEdge"][k - 1] = e.min()
        out["MaxIntensityEdge"][k - 1] = e.max()
        med = _cp_quantile(s, 0.5)
        out["LowerQuartileIntensity"][k - 1] = _cp_quantile(s, 0.25)
        out["MedianIntensity"][k - 1] = med
        out["UpperQuartileIntensity"][k - 1] = _cp_quantile(s, 0.75)
        out["MADIntensity"][k - 1] = _cp_quantile(np.sort(np.abs(v - med)), 0.5)
        cx, cy = (xx[m] * v).sum() / v.sum(), (yy[m] * v).sum() / v.sum()
        out["MassDisplacement"][k - 1] = np.hypot(xx[m].mean() - cx, yy[m].mean() - cy)
        out["CenterMassIntensity_X"][k - 1] = cx
        out["CenterMassIntensity_Y"][k - 1] = cy
        out["CenterMassIntensity_Z"][k - 1] = 0.0
        first = np.flatnonzero((img == v.max()).ravel() & m.ravel())[0]
        out["MaxIntensity_X"][k - 1] = first % w
        out["MaxIntensity_Y"][k - 1] = first // w
        out["MaxIntensity_Z"][k - 1] = 0.0
    return out


def _column(feature: str, comp: str = "Cells", ch: str = "DNA") -> str:
    category = "Intensity" if feature in INTENSITY_FEATURES else "Location"
    return f"{comp}_{category}_{feature}_{ch}"


def _random_objects(rng: np.random.Generator, shape=(40, 50), n=6) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        hh, ww = rng.integers(2, 14, size=2)
        labels[y : y + hh, x : x + ww] = k  # later objects overlap (and touch) earlier ones
    return labels


def test_column_names_and_order():
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[2:5, 2:5] = 1
    img = np.ones((2, 8, 8), dtype=np.float32)
    out = measure_intensity(img, {"Cells": labels, "Nuclei": labels}, 1, ["DNA", "Mito"])
    expected = [
        _column(f, comp, ch)
        for comp in ("Cells", "Nuclei")
        for ch in ("DNA", "Mito")
        for f in INTENSITY_FEATURES + LOCATION_FEATURES
    ]
    assert list(out) == expected
    assert all(v.dtype == np.float64 and v.shape == (1,) for v in out.values())


def test_uniform_object():
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[4:11, 6:15] = 1  # 7 x 9
    img = np.full((1, 20, 30), 0.3, dtype=np.float32)
    out = measure_intensity(img, {"Cells": labels}, 1, ["DNA"])
    v = float(np.float32(0.3))
    get = {f: out[_column(f)][0] for f in INTENSITY_FEATURES + LOCATION_FEATURES}
    assert get["IntegratedIntensity"] == pytest.approx(v * 63)
    for f in ("MeanIntensity", "MinIntensity", "MaxIntensity", "LowerQuartileIntensity"):
        assert get[f] == pytest.approx(v)
    for f in ("MedianIntensity", "UpperQuartileIntensity", "MeanIntensityEdge"):
        assert get[f] == pytest.approx(v)
    for f in ("StdIntensity", "MADIntensity", "MassDisplacement", "StdIntensityEdge"):
        assert get[f] == pytest.approx(0.0, abs=1e-12)
    assert get["IntegratedIntensityEdge"] == pytest.approx(v * (63 - 5 * 7))
    assert get["CenterMassIntensity_X"] == pytest.approx(10.0)
    assert get["CenterMassIntensity_Y"] == pytest.approx(7.0)
    assert get["CenterMassIntensity_Z"] == 0.0
    assert (get["MaxIntensity_X"], get["MaxIntensity_Y"]) == (6.0, 4.0)  # first in C order


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 13, 100, 101])
def test_ramp_quantiles_against_numpy(size):
    labels = np.zeros((3, size + 2), dtype=np.int32)
    labels[1, 1 : size + 1] = 1
    img = np.zeros((1, 3, size + 2), dtype=np.float32)
    ramp = np.linspace(0.1, 0.9, size, dtype=np.float32) ** 2
    img[0, 1, 1 : size + 1] = ramp[::-1]  # descending in the image; order must not matter
    out = measure_intensity(img, {"Cells": labels}, 1, ["DNA"])
    s = np.sort(ramp.astype(np.float64))
    n = size
    for q, f in ((0.25, "LowerQuartileIntensity"), (0.5, "MedianIntensity")):
        lo = int(n * q)
        frac = n * q - lo
        expected = s[lo] if lo >= n - 1 else s[lo] * (1 - frac) + s[lo + 1] * frac
        assert out[_column(f)][0] == expected
    median = out[_column("MedianIntensity")][0]
    # CellProfiler's median is not numpy's: position n/2 (0-based), i.e. the upper middle value
    # for even n and halfway between the middle value and the next one for odd n.
    if n == 1:
        assert median == s[0]
    elif n % 2 == 0:
        assert median == s[n // 2]
    else:
        assert median == pytest.approx((s[n // 2] + s[n // 2 + 1]) / 2, rel=1e-15)
    assert out[_column("UpperQuartileIntensity")][0] == _cp_quantile(s, 0.75)
    dev = np.sort(np.abs(ramp.astype(np.float64) - median))
    assert out[_column("MADIntensity")][0] == _cp_quantile(dev, 0.5)


def test_edge_of_square_is_its_border():
    rng = np.random.default_rng(1)
    labels = np.zeros((16, 16), dtype=np.int32)
    labels[3:10, 4:12] = 1
    img = rng.random((1, 16, 16)).astype(np.float32)
    out = measure_intensity(img, {"Cells": labels}, 1, ["DNA"])
    square = img[0, 3:10, 4:12].astype(np.float64)
    border = np.concatenate([square[0], square[-1], square[1:-1, 0], square[1:-1, -1]])
    assert out[_column("IntegratedIntensityEdge")][0] == pytest.approx(border.sum(), rel=1e-12)
    assert out[_column("MeanIntensityEdge")][0] == pytest.approx(border.mean(), rel=1e-12)
    assert out[_column("StdIntensityEdge")][0] == pytest.approx(border.std(), rel=1e-9)
    assert out[_column("MinIntensityEdge")][0] == border.min()
    assert out[_column("MaxIntensityEdge")][0] == border.max()


def test_touching_objects_and_image_border():
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[:, :4] = 1  # touches the image border on three sides
    labels[:, 4:] = 2  # touches object 1 and the image border
    edge = inner_boundary(labels)
    expected = np.zeros_like(edge)
    expected[:, 3:5] = True  # only the shared boundary: the image border is not an edge
    np.testing.assert_array_equal(edge, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = _random_objects(rng)
    n = int(labels.max()) + 2  # two absent objects at the end
    img = rng.random((2, *labels.shape)).astype(np.float32)
    img[1] = np.round(img[1] * 4) / 4  # many ties
    out = measure_intensity(img, {"Cells": labels}, n, ["DNA", "ER"])
    for c, ch in enumerate(["DNA", "ER"]):
        ref = _brute_force(img[c], labels, n)
        for f, values in ref.items():
            np.testing.assert_allclose(
                out[_column(f, ch=ch)], values, rtol=1e-10, atol=1e-12, err_msg=f
            )


def test_permutation_invariance():
    rng = np.random.default_rng(3)
    labels = _random_objects(rng, n=7)
    n = 7
    img = rng.random((1, *labels.shape)).astype(np.float32)
    perm = rng.permutation(n) + 1  # object k becomes perm[k - 1]
    relabelled = np.concatenate([[0], perm])[labels].astype(np.int32)
    a = measure_intensity(img, {"Cells": labels}, n, ["DNA"])
    b = measure_intensity(img, {"Cells": relabelled}, n, ["DNA"])
    for key in a:
        np.testing.assert_array_equal(b[key][perm - 1], a[key])


def test_absent_objects_and_empty_field():
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[2:5, 2:5] = 2  # object 1 absent
    img = np.ones((1, 10, 10), dtype=np.float32)
    out = measure_intensity(img, {"Nuclei": labels}, 3, ["DNA"])
    for values in out.values():
        assert np.isnan(values[0]) and np.isnan(values[2]) and np.isfinite(values[1])
    empty = measure_intensity(img, {"Cells": np.zeros((10, 10), np.int32)}, 0, ["DNA"])
    assert len(empty) == len(INTENSITY_FEATURES) + len(LOCATION_FEATURES)
    assert all(v.shape == (0,) for v in empty.values())


def test_zero_intensity_object_has_nan_centre_of_mass():
    labels = np.zeros((6, 6), dtype=np.int32)
    labels[1:4, 1:4] = 1
    out = measure_intensity(np.zeros((1, 6, 6), np.float32), {"Cells": labels}, 1, ["DNA"])
    assert out[_column("IntegratedIntensity")][0] == 0.0
    assert np.isnan(out[_column("CenterMassIntensity_X")][0])
    assert np.isnan(out[_column("MassDisplacement")][0])


def test_inputs_untouched_and_deterministic():
    rng = np.random.default_rng(5)
    labels = _random_objects(rng)
    img = rng.random((1, *labels.shape)).astype(np.float32)
    lab0, img0 = labels.copy(), img.copy()
    a = measure_intensity(img, {"Cells": labels}, 6, ["DNA"])
    b = measure_intensity(img, {"Cells": labels}, 6, ["DNA"])
    np.testing.assert_array_equal(labels, lab0)
    np.testing.assert_array_equal(img, img0)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_bad_arguments():
    labels = np.zeros((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="channels"):
        measure_intensity(np.zeros((2, 4, 4)), {"Cells": labels}, 0, ["DNA"])
    with pytest.raises(ValueError, match="more than n"):
        measure_intensity(np.zeros((1, 4, 4)), {"Cells": labels + 1}, 0, ["DNA"])
