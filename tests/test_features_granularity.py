"""Known answers for hcsflow.features.granularity (CellProfiler MeasureGranularity)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import skimage.morphology as morph

from hcsflow.features.granularity import (
    _disk_filter,
    _spectrum_ranks,
    measure_granularity,
)


def _cellprofiler(
    pixels: np.ndarray, labels: np.ndarray, n: int, sub=0.25, back=0.25, radius=10, length=16
) -> np.ndarray:
    """CellProfiler 4's MeasureGranularity per object, transcribed literally; (n, length)."""
    orig = pixels.astype(np.float64)
    new_shape = np.array(orig.shape) * sub
    i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float) / sub
    img = ndi.map_coordinates(orig, (i, j), order=1)
    back_shape = new_shape * back
    i, j = np.mgrid[0 : back_shape[0], 0 : back_shape[1]].astype(float) / back
    bg = ndi.map_coordinates(img, (i, j), order=1)
    bg = morph.dilation(morph.erosion(bg, morph.disk(radius)), morph.disk(radius))
    i, j = np.mgrid[0 : new_shape[0], 0 : new_shape[1]].astype(float)
    i *= float(back_shape[0] - 1) / float(new_shape[0] - 1)
    j *= float(back_shape[1] - 1) / float(new_shape[1] - 1)
    img -= ndi.map_coordinates(bg, (i, j), order=1)
    img[img < 0] = 0
    index = np.arange(1, n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        current = np.asarray(ndi.mean(orig, labels, index))
    start = np.maximum(current, np.finfo(float).eps)
    ero = img.copy()
    out = np.empty((n, length))
    for s in range(length):
        ero = morph.erosion(ero, morph.disk(1))
        rec = morph.reconstruction(ero, img, footprint=morph.disk(1))
        i, j = np.mgrid[0 : orig.shape[0], 0 : orig.shape[1]].astype(float)
        i *= float(new_shape[0] - 1) / float(orig.shape[0] - 1)
        j *= float(new_shape[1] - 1) / float(orig.shape[1] - 1)
        rec = ndi.map_coordinates(rec, (i, j), order=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.asarray(ndi.mean(rec, labels, index))
        out[:, s] = (current - new) * 100 / start
        current = new
    return out


def _spots_field(shape, centres, radius, value=1.0, background=0.1) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.full(shape, background)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return img


def _spectrum(out: dict, comp: str, ch: str, length: int = 16) -> np.ndarray:
    return np.stack([out[f"{comp}_Granularity_{s}_{ch}"] for s in range(1, length + 1)], axis=1)


def test_column_names_and_order():
    labels = np.zeros((32, 32), dtype=np.int32)
    labels[4:20, 4:20] = 1
    img = np.ones((2, 32, 32), dtype=np.float32)
    out = measure_granularity(img, {"Cells": labels, "Nuclei": labels}, 1, ["A", "B"])
    expected = [
        f"{comp}_Granularity_{s}_{ch}"
        for comp in ("Cells", "Nuclei")
        for ch in ("A", "B")
        for s in range(1, 17)
    ]
    assert list(out) == expected


def test_flat_image():
    # CellProfiler compares the spectrum to the mean of the *original* image: a flat image
    # loses everything to background removal at scale 1 (100 %) and nothing afterwards.
    labels = np.zeros((64, 64), dtype=np.int32)
    labels[8:40, 10:50] = 1
    labels[45:60, 5:20] = 2
    out = measure_granularity(np.full((1, 64, 64), 0.4, np.float32), {"Cells": labels}, 2, ["A"])
    spec = _spectrum(out, "Cells", "A")
    np.testing.assert_allclose(spec[:, 0], 100.0, atol=1e-9)
    np.testing.assert_allclose(spec[:, 1:], 0.0, atol=1e-9)
    zero = measure_granularity(np.zeros((1, 64, 64), np.float32), {"Cells": labels}, 2, ["A"])
    np.testing.assert_array_equal(_spectrum(zero, "Cells", "A"), 0.0)


def test_small_spots_peak_at_small_scales_and_blobs_later():
    # Scale 1 also holds the removed background (0.1 everywhere) and what subsampling loses.
    shape = (256, 256)
    rng = np.random.default_rng(0)
    spots = _spots_field(shape, rng.integers(30, 226, size=(12, 2)), radius=8)
    blobs = _spots_field(shape, [(70, 70), (70, 180), (180, 120)], radius=22)
    labels = np.ones(shape, dtype=np.int32)
    img = np.stack([spots, blobs]).astype(np.float32)
    out = measure_granularity(img, {"Cells": labels}, 1, ["spots", "blobs"])
    s = _spectrum(out, "Cells", "spots")[0]
    b = _spectrum(out, "Cells", "blobs")[0]
    # spots of radius 8 are ~4 px wide after 1/4 subsampling: gone by the 2nd-3rd erosion
    assert np.argmax(s[1:]) + 2 == 2
    assert s[1:3].sum() > 10 and np.allclose(s[3:], 0.0, atol=1e-9)
    # blobs of radius 22 (~11 px wide) survive 4 erosions and go at the 5th-6th
    assert np.argmax(b[1:]) + 2 in (5, 6)
    assert np.allclose(b[1:4], 0.0, atol=1e-9) and b[4:6].sum() > 10
    assert np.all(s > -1e-9) and np.all(b > -1e-9)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((96, 120), {}),
        ((66, 81), {}),  # not a multiple of 4: CellProfiler's unrounded grid sizes
        ((12, 14), {}),  # background sample of a single pixel
        ((80, 80), {"subsample_size": 0.5, "image_sample_size": 0.5, "element_size": 4}),
        ((40, 48), {"subsample_size": 1.0, "image_sample_size": 1.0, "spectrum_length": 5}),
    ],
)
def test_against_cellprofiler_transcription(shape, options):
    rng = np.random.default_rng(sum(shape))
    img = ndi.gaussian_filter(rng.random(shape), 1.5) + _spots_field(
        shape, rng.integers(5, min(shape) - 5, size=(8, 2)), radius=2, value=0.5, background=0
    )
    labels = np.zeros(shape, dtype=np.int32)
    labels[2:30, 3:40] = 1
    labels[30:, 20:] = 2  # touches the image border
    labels[5:12, -10:] = 4  # object 3 absent
    sub = options.get("subsample_size", 0.25)
    back = options.get("image_sample_size", 0.25)
    length = options.get("spectrum_length", 16)
    out = measure_granularity(img[None].astype(np.float32), {"Nuclei": labels}, 4, ["A"], **options)
    ref = _cellprofiler(
        img.astype(np.float32), labels, 4, sub, back, options.get("element_size", 10), length
    )
    np.testing.assert_allclose(_spectrum(out, "Nuclei", "A", length), ref, rtol=1e-7, atol=1e-9)
    assert np.isnan(ref[2]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_reconstruction_and_disk_filter_match_scikit_image(seed):
    rng = np.random.default_rng(seed)
    a = np.round(rng.random((31, 47)) * 6)  # many ties
    order = np.argsort(a.ravel(), kind="stable")
    spectrum = a.ravel()[order][_spectrum_ranks(a, order, 5)]
    ero = a.copy()
    for s in range(5):
        ero = morph.erosion(ero, morph.disk(1))
        expected = morph.reconstruction(ero, a, footprint=morph.disk(1))
        np.testing.assert_array_equal(spectrum[:, :, s], expected)
    for radius in (1, 4, 10):
        np.testing.assert_array_equal(
            _disk_filter(a, radius, False), morph.erosion(a, morph.disk(radius))
        )
        np.testing.assert_array_equal(
            _disk_filter(a, radius, True), morph.dilation(a, morph.disk(radius))
        )


def test_permutation_invariance_and_shared_morphology():
    rng = np.random.default_rng(4)
    shape = (64, 72)
    img = rng.random((1, *shape)).astype(np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for k in range(1, 6):
        y, x = rng.integers(0, 50, size=2)
        labels[y : y + 14, x : x + 20] = k
    n = 5
    perm = rng.permutation(n) + 1
    relabelled = np.concatenate([[0], perm])[labels].astype(np.int32)
    a = measure_granularity(img, {"Cells": labels}, n, ["A"])
    b = measure_granularity(img, {"Cells": labels, "Nuclei": relabelled}, n, ["A"])
    for s in range(1, 17):
        np.testing.assert_array_equal(b[f"Cells_Granularity_{s}_A"], a[f"Cells_Granularity_{s}_A"])
        np.testing.assert_allclose(
            b[f"Nuclei_Granularity_{s}_A"][perm - 1], a[f"Cells_Granularity_{s}_A"], rtol=1e-12
        )


def test_absent_objects_empty_field_and_bad_options():
    img = np.ones((1, 32, 32), dtype=np.float32)
    labels = np.zeros((32, 32), dtype=np.int32)
    labels[4:12, 4:12] = 2
    out = measure_granularity(img, {"Cells": labels}, 3, ["A"])
    for values in out.values():
        assert np.isnan(values[0]) and np.isfinite(values[1]) and np.isnan(values[2])
    empty = measure_granularity(img, {"Cells": np.zeros((32, 32), np.int32)}, 0, ["A"])
    assert len(empty) == 16 and all(v.shape == (0,) for v in empty.values())
    tiny = measure_granularity(np.ones((1, 4, 4), np.float32), {"Cells": labels[:4, :4]}, 3, ["A"])
    assert all(np.isnan(v).all() for v in tiny.values())  # subsampled grid below 2 x 2
    with pytest.raises(ValueError, match="subsample_size"):
        measure_granularity(img, {"Cells": labels}, 3, ["A"], subsample_size=0)


def test_inputs_untouched_and_deterministic():
    rng = np.random.default_rng(7)
    img = rng.random((2, 48, 40)).astype(np.float32)
    labels = np.zeros((48, 40), dtype=np.int32)
    labels[5:30, 5:30] = 1
    labels[30:45, 10:38] = 2
    img0, lab0 = img.copy(), labels.copy()
    a = measure_granularity(img, {"Cells": labels}, 2, ["A", "B"])
    b = measure_granularity(img, {"Cells": labels}, 2, ["A", "B"])
    np.testing.assert_array_equal(img, img0)
    np.testing.assert_array_equal(labels, lab0)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
