"""Tests of flat-field / dark-field estimation, screening, correction and files."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from hcsflow import illumination as il
from hcsflow.illumination.darkfield import _centred_contrast
from hcsflow.simulate import simulate_illumination_stack

SHAPE = (128, 128)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


@pytest.fixture(scope="module")
def stack_dark():
    return simulate_illumination_stack(40, SHAPE, vignetting="offcenter", dark_offset=True, seed=1)


@pytest.fixture(scope="module")
def stack_nodark():
    return simulate_illumination_stack(40, SHAPE, vignetting="radial", dark_offset=False, seed=2)


def test_recovers_flatfield_without_dark(stack_nodark):
    stack, flat, _ = stack_nodark
    est, dark = il.estimate(stack, "basic", darkfield=False)
    assert est.shape == SHAPE and est.dtype == np.float32 and dark.dtype == np.float32
    assert abs(est.mean() - 1) < 1e-4
    assert np.all(dark == 0)
    # the truth varies by about 8 %; the estimate removes more than half of it
    assert rmse(np.ones(SHAPE), flat) > 0.06
    assert rmse(est, flat) < 0.045


def test_recovers_flatfield_and_darkfield(stack_dark):
    stack, flat, dark = stack_dark
    est_flat, est_dark = il.estimate(stack, "basic", darkfield=True)
    # the truth varies by about 7.5 %; the estimate is closer to it than no correction
    assert rmse(est_flat, flat) < 0.7 * rmse(np.ones(SHAPE), flat)
    assert abs(float(est_dark.mean()) - float(dark.mean())) < 10
    # ignoring the dark-field biases the flat-field
    biased, _ = il.estimate(stack, "basic", darkfield=False)
    assert rmse(biased, flat) > rmse(est_flat, flat)


@pytest.fixture(scope="module")
def stack_varied():
    # background level varies from well to well (CV 0.3) and field to field
    return simulate_illumination_stack(
        60, SHAPE, vignetting="offcenter", dark_offset=True, seed=1, background_cv=0.3
    )


def _pattern_rmse(est: np.ndarray, truth: np.ndarray) -> float:
    return rmse(est - est.mean(), truth - truth.mean())


def test_recovers_flat_and_dark_pattern_from_noise_law(stack_varied):
    stack, flat, dark = stack_varied
    res = il.fit(stack, "basic")
    const = il.fit(stack, "basic", dark_pattern=False)
    assert res.details["darkfield_model"] == "surface"
    assert res.details["dark_pattern_source"] == "noise"
    assert const.details["darkfield_model"] == "constant"
    assert np.ptp(const.darkfield) < 1e-3  # a constant offset
    # the dark-field's spatial pattern (SD 1.6 raw units) is recovered: a constant offset
    # leaves an error equal to the pattern's SD
    assert _pattern_rmse(const.darkfield, dark) > 0.95 * dark.std()
    assert _pattern_rmse(res.darkfield, dark) < 0.7 * dark.std()
    assert np.corrcoef(res.darkfield.ravel(), dark.ravel())[0, 1] > 0.7
    assert abs(float(res.darkfield.mean()) - float(dark.mean())) < 6
    assert rmse(res.flatfield, flat) < 0.046
    # and the flat-field is closer to the truth than with a constant dark-field. On this stack
    # the fields' own low-frequency background happens to cancel most of the shading's
    # gradient, and shrinking that gradient towards zero costs more than the dark-field
    # pattern gains: the comparison keeps every coefficient, to isolate the pattern's effect
    surface = il.fit(stack, "basic", smoothing="fixed")
    constant = il.fit(stack, "basic", smoothing="fixed", dark_pattern=False)
    assert rmse(surface.flatfield, flat) < 0.042
    assert rmse(surface.flatfield, flat) < 0.85 * rmse(constant.flatfield, flat)
    assert 0.25 < res.details["baseline_cv"] < 0.4


def _synthetic_stack(n: int, baseline_cv: float, seed: int = 0):
    """Fields ``b_n S + D`` + sparse bright spots + Gaussian noise, 64 x 64.

    The fields are no larger than the working grid, so no noise statistics are gathered: only
    the baselines' variation can reveal the dark-field's pattern.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    flat = (1 + 0.12 * (x**2 + y**2)) ** -2.0
    flat /= flat.mean()
    dark = 100 + 4.0 * x - 2.5 * y  # a gradient: no component along the radial shading
    sigma = np.sqrt(np.log1p(baseline_cv**2))
    b = 50 * np.exp(rng.normal(0, sigma, n))
    spots = (rng.random((n, 64, 64)) < 0.02) * rng.uniform(50, 150, (n, 64, 64))
    stack = b[:, None, None] * flat + dark + spots * flat + rng.normal(0, 0.5, (n, 64, 64))
    return stack.astype(np.float32), flat, dark


def test_dark_pattern_from_baseline_variation():
    stack, flat, dark = _synthetic_stack(80, 0.3)
    res = il.fit(stack, "basic", screen=False)
    const = il.fit(stack, "basic", screen=False, dark_pattern=False)
    assert res.details["darkfield_model"] == "surface"
    assert res.details["dark_pattern_source"] == "baseline"
    # the gradient (SD 2.8 units) is recovered within 0.3 units, its level within 3 units,
    # the flat-field within 0.8 %; a constant dark-field leaves 4-5 % flat-field error
    assert _pattern_rmse(res.darkfield, dark) < 0.3
    assert abs(float(res.darkfield.mean()) - float(dark.mean())) < 3
    assert rmse(res.flatfield, flat) < 0.008
    assert rmse(const.flatfield, flat) > 4 * rmse(res.flatfield, flat)


def test_constant_baseline_falls_back_to_constant_dark():
    # every field has the same background level: the pattern cannot be told from the flat-field
    stack, flat, dark = _synthetic_stack(80, 0.0)
    res = il.fit(stack, "basic", screen=False)
    assert res.details["darkfield_model"] == "constant"
    assert res.details["dark_pattern_shrinkage"] == 0.0
    assert np.ptp(res.darkfield) < 1e-3
    assert res.meta()["fit"]["darkfield_model"] == "constant"


def _centred_inputs(baseline_cv: float, dark: np.ndarray | float, n: int = 60, seed: int = 0):
    """Fields ``b_n S + D`` with smooth per-field background texture and noise, 32 x 32."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1:1:32j, -1:1:32j]
    flat = (1 + 0.15 * ((x - 0.2) ** 2 + y**2)) ** -2.0
    flat /= flat.mean()
    b = 50 * np.exp(rng.normal(0, np.sqrt(np.log1p(baseline_cv**2)), n))
    texture = 0.03 * np.sin(
        3 * x[None] * rng.uniform(1, 2, (n, 1, 1)) + rng.uniform(0, 6, (n, 1, 1))
    )
    noise = rng.normal(0, 0.3, (n, 32, 32))
    stack = b[:, None, None] * flat * (1 + texture) + dark + noise
    return stack.reshape(n, -1), flat.ravel(), b


def test_centred_contrast_does_not_depend_on_the_dark_field():
    # a flat-field fitted with a wrong dark level keeps the shape with a scaled contrast; the
    # fields' variation about their mean gives the scale back whatever the dark-field
    y, x = np.mgrid[-1:1:32j, -1:1:32j]
    dark_a = np.zeros((32, 32))
    dark_b = 140 + 6 * x - 3 * y
    Ya, flat, b = _centred_inputs(0.3, dark_a)
    Yb, _, _ = _centred_inputs(0.3, dark_b)
    s_fit = 1 + (flat - 1) / 1.25  # contrast 1.25 times too low
    W = np.ones_like(Ya)
    ka, va = _centred_contrast(Ya, s_fit, b + 7.0, W)  # baselines up to a shift
    kb, vb = _centred_contrast(Yb, s_fit, b + 7.0, W)
    assert ka == pytest.approx(kb, rel=1e-9) and va == pytest.approx(vb, rel=1e-6)
    assert abs(ka - 1.25) < 0.05 and abs(ka - 1.25) < 4 * np.sqrt(va)
    # baselines that do not vary carry no contrast
    Yc, _, bc = _centred_inputs(0.0, dark_b)
    assert _centred_contrast(Yc, s_fit, bc, W) is None


def test_centred_contrast_corrects_the_dark_level():
    # a stack on which the contrast regression puts the dark level 27 units below the truth
    # (flat-field error 3.0 %); the centred fields' contrast moves it most of the way back
    stack, flat, dark = simulate_illumination_stack(
        100,
        (256, 256),
        vignetting="offcenter",
        dark_offset=True,
        density=1.0,
        seed=12,
        background_cv=0.25,
        background_jitter=0.05,
    )
    regression = il.fit(stack, "basic", centred=False)
    res = il.fit(stack, "basic")
    assert regression.details["contrast_factor"] == 1.0
    assert res.details["contrast_factor"] > 1.1 and 0.3 < res.details["contrast_weight"] <= 1
    true_level = float(dark.mean())
    assert true_level - regression.details["dark_level"] > 20
    assert abs(res.details["dark_level"] - true_level) < 15
    assert rmse(regression.flatfield, flat) > 0.028
    assert rmse(res.flatfield, flat) < 0.6 * rmse(regression.flatfield, flat)


def _noisy_stack(n: int, flat: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
    """Fields ``b_n S`` + white Gaussian noise (``noise`` relative to the baseline), 64 x 64."""
    rng = np.random.default_rng(seed)
    b = 100 * np.exp(rng.normal(0, 0.1, n))
    stack = b[:, None, None] * (flat + rng.normal(0, noise, (n, *flat.shape)))
    return stack.astype(np.float32)


@pytest.mark.parametrize("shading", ["uniform", "radial"])
def test_adaptive_smoothing_drops_what_the_fields_do_not_determine(shading):
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    flat = np.ones((64, 64)) if shading == "uniform" else (1 + 0.12 * (x**2 + y**2)) ** -2.0
    flat /= flat.mean()
    # noise of 40 % per pixel and field: every coefficient of a fixed cosine series up to 4
    # cycles carries about 1 / sqrt(P N) of it; the true shading needs only a few of them
    stack = _noisy_stack(40, flat, 0.4)
    kw = dict(darkfield=False, screen=False)
    fixed = il.fit(stack, "basic", smoothing="fixed", **kw)
    adaptive = il.fit(stack, "basic", **kw)
    e_fixed, e_adaptive = rmse(fixed.flatfield, flat), rmse(adaptive.flatfield, flat)
    assert (fixed.details["smoothing"], adaptive.details["smoothing"]) == ("fixed", "adaptive")
    assert e_fixed > 0.008
    # pure-noise coefficients are shrunk (the uniform shading has no other), the shading's
    # own are kept
    assert e_adaptive < (0.65 if shading == "uniform" else 0.8) * e_fixed
    assert e_adaptive < 0.008


def test_uniform_illumination_gives_a_constant_flatfield():
    # no shading at all: the surface is tested against a constant and comes out exactly flat
    stack = _noisy_stack(40, np.ones((64, 64)), 0.4)
    res = il.fit(stack, "basic", darkfield=False, screen=False)
    assert float(np.ptp(res.flatfield)) < 1e-6
    assert res.details["flatfield_uniform"] is True
    # with a fixed cut-off the same fields give a shaded surface
    fixed = il.fit(stack, "basic", darkfield=False, screen=False, smoothing="fixed")
    assert float(np.ptp(fixed.flatfield)) > 0.01


def test_weak_but_determined_shading_is_not_taken_for_uniform():
    # a 1.5 % tilt, well above the noise of 40 fields, must survive the uniformity test
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    flat = 1 + 0.015 * x
    stack = _noisy_stack(40, flat, 0.05)
    res = il.fit(stack, "basic", darkfield=False, screen=False)
    assert float(np.ptp(res.flatfield)) > 0.02
    assert res.details["flatfield_uniform"] is False
    assert rmse(res.flatfield, flat / flat.mean()) < 0.003


def test_adaptive_smoothing_keeps_a_well_determined_surface():
    # little noise: the shading's coefficients, and its fine detail up to max_frequency, stay
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    flat = (1 + 0.12 * (x**2 + y**2)) ** -2.0 * (1 + 0.05 * np.cos(3 * np.pi * x))
    flat /= flat.mean()
    stack = _noisy_stack(40, flat, 0.02)
    kw = dict(darkfield=False, screen=False)
    fixed = il.fit(stack, "basic", smoothing="fixed", **kw)
    adaptive = il.fit(stack, "basic", **kw)
    assert rmse(adaptive.flatfield, flat) < 0.004
    assert rmse(adaptive.flatfield, fixed.flatfield) < 0.002


def test_smoothing_option_is_checked():
    with pytest.raises(ValueError, match="smoothing 'wiggly'"):
        il.fit(np.ones((3, 8, 8)), "basic", smoothing="wiggly")


def test_mean_smooth_recovers_flatfield(stack_nodark):
    stack, flat, _ = stack_nodark
    est, dark = il.estimate(stack, "mean_smooth")
    assert rmse(est, flat) < 0.05
    assert np.all(dark == 0)


def test_none_method_is_identity(stack_nodark):
    flat, dark = il.estimate(stack_nodark[0], "none")
    assert np.all(flat == 1) and np.all(dark == 0)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_correcting_flat_image_gives_constant(stack_dark, offset):
    flat, dark = stack_dark[1], stack_dark[2] * (offset > 0)
    image = (500.0 * flat + dark).astype(np.float32)
    before = image.copy()
    out = il.correct(image, flat, dark)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 500.0, rtol=1e-5)
    np.testing.assert_array_equal(image, before)  # input untouched


def test_correct_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        il.correct(np.zeros((4, 5)), np.ones((4, 4)), np.zeros((4, 4)))


def test_screening_excludes_blank_saturated_and_blurred(stack_nodark):
    stack = stack_nodark[0][:20].copy()
    bad = stack[:3].copy()
    bad[0] = 100  # blank: a constant frame
    bad[1][:40, :] = np.iinfo(np.uint16).max  # saturated: a quarter of the field clipped
    bad[2] = ndi.gaussian_filter(stack[2].astype(float), 6).astype(np.uint16)  # out of focus
    full = np.concatenate([stack, bad])
    res = il.fit(full, "basic", darkfield=False)
    assert res.excluded == {20: "blank", 21: "saturated", 22: "out_of_focus"}
    assert res.used.sum() == 20
    assert res.meta()["excluded"] == {"blank": 1, "out_of_focus": 1, "saturated": 1}
    # without screening every field is used
    assert il.fit(full, "basic", darkfield=False, screen=False).used.all()


def test_summary_line_for_the_log(stack_nodark, stack_dark):
    stack = stack_nodark[0][:20].copy()
    blank = np.full((2, *SHAPE), 100, dtype=stack.dtype)
    res = il.fit(np.concatenate([stack, blank]), "basic", darkfield=False)
    meta = {**res.meta(), "group": "P1", "channel": "DNA", "plates": ["P1"], "plate": "P1"}
    meta["config"] = {"method": "basic", "max_fields": 200}
    line = il.summarize(meta, res.flatfield, res.darkfield)
    assert line.startswith("channel DNA of P1: basic from 20 of 22 fields (left out: 2 blank)")
    lo, hi = res.flatfield.min(), res.flatfield.max()
    assert f"flat-field {lo:.4g} to {hi:.4g}" in line
    assert "dark-field constant 0" in line
    assert "\n" not in line and "{" not in line and "max_fields" not in line
    assert all(f"{k} " in line for k in meta["fit"])

    res = il.fit(stack_dark[0], "basic", darkfield=True)
    meta = {**res.meta(), "group": "batch B1", "channel": "ER", "plate": "P2"}
    line = il.summarize(meta, res.flatfield, res.darkfield)
    assert line.startswith("channel ER of batch B1 (for plate P2): basic from 40 of 40 fields;")
    assert f"(mean {res.darkfield.astype(np.float64).mean():.4g})" in line


def test_too_few_fields_warns_and_falls_back(stack_nodark):
    few = stack_nodark[0][:5]
    with pytest.warns(il.IlluminationWarning, match="only 5 of 5 fields"):
        res = il.fit(few, "basic", min_fields=10, fallback="mean_smooth")
    assert res.method == "mean_smooth"
    assert not np.all(res.flatfield == 1)
    with pytest.warns(il.IlluminationWarning):
        res = il.fit(few, "basic", min_fields=10, fallback="none")
    assert res.method == "none" and np.all(res.flatfield == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert il.fit(few, "basic", min_fields=5).method == "basic"


def test_shape_mismatch_names_the_file(tmp_path, stack_nodark):
    paths = []
    for i in range(3):
        p = tmp_path / f"field{i}.tif"
        img = stack_nodark[0][i] if i < 2 else stack_nodark[0][i][:100]
        tifffile.imwrite(p, img)
        paths.append(p)
    with pytest.raises(ValueError, match="field2.tif has shape"):
        il.estimate_from_files(paths)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "tophat"}, "illumination method"),
        ({"method": "basic", "fallback": "basic"}, "illumination fallback"),
    ],
)
def test_bad_arguments(stack_nodark, kwargs, message):
    with pytest.raises(ValueError, match=message):
        il.fit(stack_nodark[0][:3], **kwargs)


def test_empty_and_nan_stacks():
    with pytest.raises(ValueError, match="empty"):
        il.fit(iter([]))
    bad = np.ones((3, 8, 8), np.float32)
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="field 1 contains NaN"):
        il.fit(bad)


def test_npz_round_trip_is_byte_identical(tmp_path, stack_nodark):
    flat, dark = il.estimate(stack_nodark[0], "basic")
    meta = {"method": "basic", "n_used": 40}
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    il.save(a, flat, dark, meta)
    il.save(b, flat, dark, meta)
    assert a.read_bytes() == b.read_bytes()
    flat2, dark2 = il.load(a)
    np.testing.assert_array_equal(flat2, flat)
    np.testing.assert_array_equal(dark2, dark)
    assert flat2.dtype == np.float32 and dark2.dtype == np.float32
    assert il.load_meta(a) == meta
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="cannot read illumination file"):
        il.load(tmp_path / "missing.npz")


def test_plot_writes_png(tmp_path, stack_dark):
    out = tmp_path / "DNA.png"
    il.plot(out, stack_dark[1], stack_dark[2], "plate / DNA")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimation_is_deterministic(stack_dark):
    a = il.estimate(stack_dark[0], "basic")
    b = il.estimate(iter(list(stack_dark[0])), "basic")  # a generator of fields
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sample_fields_is_deterministic_and_order_free():
    wells = [f"{r}{c:02d}" for r in "ABCD" for c in range(1, 13)]
    man = pd.DataFrame(
        {
            "Metadata_Plate": "P1",
            "Metadata_Well": np.repeat(wells, 4),
            "Metadata_Site": np.tile(np.arange(1, 5), len(wells)),
        }
    )
    s1 = il.sample_fields(man, 50, seed=0)
    s2 = il.sample_fields(man.sample(frac=1, random_state=3), 50, seed=0)
    assert len(s1) == 50 and s1.equals(s2)
    assert not s1.equals(il.sample_fields(man, 50, seed=1))
    assert len(il.sample_fields(man, 1000)) == len(man)
    with pytest.raises(ValueError, match="max_fields"):
        il.sample_fields(man, 0)


def test_estimate_from_manifest_and_write_corrected(tmp_path, stack_dark):
    stack, flat, dark = stack_dark
    rows = []
    for i in range(12):
        name = f"P1_A01_s{i + 1}_w1.tif"
        tifffile.imwrite(tmp_path / name, stack[i])
        rows.append(
            {
                "Metadata_Plate": "P1",
                "Metadata_Well": "A01",
                "Metadata_Site": i + 1,
                "PathName_DNA": str(tmp_path),
                "FileName_DNA": name,
            }
        )
    man = pd.DataFrame(rows)
    res = il.estimate_from_manifest(man, "DNA", "basic", max_fields=10, min_fields=5)
    assert res.n_fields == 10 and res.method == "basic"
    with pytest.raises(ValueError, match="PathName_ER"):
        il.estimate_from_manifest(man, "ER")
    il.save(tmp_path / "DNA.npz", flat, dark)
    n = il.write_corrected(man.iloc[:2], {"DNA": tmp_path / "DNA.npz"}, tmp_path / "corr")
    assert n == 2
    out = tifffile.imread(tmp_path / "corr" / "P1_A01_s1_w1.tif")
    np.testing.assert_allclose(out, (stack[0] - dark) / flat, rtol=1e-5)


def test_noise_statistic_is_the_pixel_noise_variance():
    # white noise of variance 9 on a smooth ramp: the diagonal 2 x 2 difference cancels the
    # ramp and measures the noise alone, at every cell of the working grid
    rng = np.random.default_rng(3)
    ramp = np.linspace(100, 300, 256)[None, :] + np.linspace(0, 50, 256)[:, None]
    fields = [ramp + rng.normal(0, 3.0, (256, 256)) for _ in range(4)]
    _, stats, _ = il.downsample(fields, working_size=32)
    assert stats.noise.shape == (4, 32, 32)
    assert abs(float(stats.noise.mean()) - 9.0) < 0.3
    assert float(stats.noise.std()) < 2.5  # about 64 pixels per cell
    # fields no larger than twice the working grid carry no noise statistic
    _, small_stats, _ = il.downsample([f[:40, :40] for f in fields], working_size=32)
    assert np.isnan(small_stats.noise).all()


# --------------------------------------------------------------------------------------------
# the dark level: fitted only when the fields determine it; given offsets and frames as given


def _dark_case(low: float, high: float, seed: int):
    """40 fields ``120 + b_n S(x) + noise``: camera offset 120, baselines ``b_n`` in [low, high].

    ``S`` is a radial vignetting (0.55 at the corners); a few bright blobs per field stand for
    cells; the noise is Gaussian, SD 3.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : SHAPE[0] * 1j, -1 : 1 : SHAPE[1] * 1j]
    flat = (1.0 + 0.2 * (x**2 + y**2)) ** -2.0
    flat /= flat.mean()
    dark = np.full(SHAPE, 120.0)
    fields = []
    for _ in range(40):
        b = rng.uniform(low, high)
        cells = np.zeros(SHAPE)
        cells[tuple(rng.integers(0, SHAPE[0], (2, 15)))] = 1.0
        cells = ndi.gaussian_filter(cells, 3.0) * 2000.0
        fields.append(dark + flat * (b + cells) + rng.normal(0, 3.0, SHAPE))
    return np.stack(fields).astype(np.float32), flat, dark


@pytest.fixture(scope="module")
def stack_at_offset():
    # the specimen background sits 1-3 counts above the camera offset: level not determined
    return _dark_case(1.0, 3.0, 31)


@pytest.fixture(scope="module")
def stack_above_offset():
    # background 100-300 counts above the offset: determined
    return _dark_case(100.0, 300.0, 32)


def test_dark_level_left_out_when_not_determined(stack_at_offset):
    stack, flat, dark = stack_at_offset
    res = il.fit(stack, "basic")
    d = res.details
    assert d["dark"] == "auto"
    assert d["dark_determined"] is False
    assert d["darkfield_model"] == "none" and d["dark_level"] == 0.0
    assert isinstance(d["dark_reason"], str) and d["dark_reason"]
    assert "dark_level_rejected" in d
    assert np.all(res.darkfield == 0)
    # the fallback is the fit without dark-field
    plain = il.fit(stack, "basic", darkfield=False)
    np.testing.assert_array_equal(res.flatfield, plain.flatfield)
    assert "dark-field left out" in il.dark_note(d)
    assert "dark_reason" in res.meta()["fit"]


def test_dark_level_fitted_when_determined(stack_above_offset):
    stack, flat, dark = stack_above_offset
    res = il.fit(stack, "basic")
    d = res.details
    assert d["dark_determined"] is True and "dark_reason" not in d
    assert abs(float(res.darkfield.mean()) - float(dark.mean())) < 10
    assert d["dark_error_kept"] <= il.DARK_TOLERANCE * d["dark_error_left_out"]
    plain = il.fit(stack, "basic", darkfield=False)
    assert rmse(res.flatfield, flat) < 0.5 * rmse(plain.flatfield, flat)
    assert il.dark_note(d).startswith("dark-field: fitted")


def test_noise_cumulants_of_poisson_gaussian_noise():
    import torch

    from hcsflow.illumination.screening import _noise_cumulants

    # gain 2 raw units per photo-electron, 15 photo-electrons, read noise SD 6 over an offset
    # of 100: second cumulant 2 * 30 + 36 = 96, third 2^2 * 30 = 120
    rng = np.random.default_rng(5)
    x = 100.0 + 2.0 * rng.poisson(15.0, (8, 256, 256)) + rng.normal(0, 6.0, (8, 256, 256))
    c = _noise_cumulants(torch.from_numpy(x.astype(np.float32))[:, None], (16, 16)).numpy()
    frac, mean, k2, k3 = (c[:, j] for j in range(4))
    assert c.shape == (8, 4, 16, 16)
    assert 0.5 < float(frac.mean()) <= 1.0
    assert abs(float(mean.mean()) - 130.0) < 0.3
    assert abs(float(np.average(k2, weights=frac)) - 96.0) < 1.5
    assert abs(float(np.average(k3, weights=frac)) - 120.0) < 12.0
    # a Gaussian noise of the same variance has no third cumulant
    g = 130.0 + rng.normal(0, np.sqrt(96.0), (8, 256, 256))
    cg = _noise_cumulants(torch.from_numpy(g.astype(np.float32))[:, None], (16, 16)).numpy()
    assert abs(float(np.average(cg[:, 3], weights=cg[:, 0]))) < 12.0


@pytest.mark.parametrize("m", [1, 2, 25, 26, 129600])
def test_lower_median_is_torch_median(m):
    import torch

    from hcsflow.illumination.screening import _lower_median

    rng = np.random.default_rng(m)
    # ties included: values on a coarse grid
    x = torch.from_numpy(np.round(rng.normal(0, 3, (3, m)), 1).astype(np.float32))
    assert torch.equal(_lower_median(x), x.median(dim=1).values)
    # a strided view (the unfolded patches are taken along their middle axis)
    y = torch.from_numpy(rng.normal(0, 1, (2, m, 7)).astype(np.float32))
    assert torch.equal(_lower_median(y.transpose(1, 2)), y.median(dim=1).values)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_field_means_equal_the_float64_mean_of_the_float32_copy(dtype):
    import torch

    from hcsflow.illumination.screening import _field_means

    rng = np.random.default_rng(3)
    hi = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 60000.0
    chunk = rng.uniform(0, hi, (3, 67, 45)).astype(dtype)
    flat = torch.from_numpy(chunk.astype(np.float32)).view(3, -1)
    got = _field_means(chunk, flat)
    assert got.dtype == np.float64
    assert np.array_equal(got, flat.mean(dim=1, dtype=torch.float64).numpy())


@pytest.mark.parametrize("n", [1, 2, 3, 8, 57, 64])
def test_median_and_mad_equal_numpy(n):
    from hcsflow.illumination.darkfield import _median_and_mad

    rng = np.random.default_rng(n)
    Y = rng.gamma(3.0, 50.0, (n, 300))
    Y[:, :100] = np.round(Y[:, :100] / 40.0) * 40.0  # ties
    Y[:, 100] = 7.0  # a constant pixel: no deviation
    med = np.median(Y, axis=0)
    got_med, got_mad = _median_and_mad(Y)
    assert np.array_equal(got_med, med)
    assert np.array_equal(got_mad, np.median(np.abs(Y - med), axis=0))
    assert got_mad[100] == 0.0


def test_masked_median_equals_nanmedian():
    from hcsflow.illumination.darkfield import _masked_median

    rng = np.random.default_rng(5)
    Q = np.round(rng.normal(0, 3, (23, 200)), 1)
    valid = rng.random((23, 200)) < 0.7
    valid[:, 0] = False  # no valid value: NaN
    valid[:, 1] = False
    valid[4, 1] = True  # one value: itself
    valid[:, 2] = True  # all valid, odd count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(np.where(valid, Q, np.nan), axis=0)
    got = _masked_median(Q, valid)
    assert np.isnan(got[0]) and got[1] == Q[4, 1]
    assert np.array_equal(got, want, equal_nan=True)


def test_jackknife_levels_equal_the_levels_without_each_group():
    from hcsflow.illumination.darkfield import _dark_level, _jackknife_levels

    stack, *_ = simulate_illumination_stack(36, (64, 64), vignetting="radial", offset=60.0, seed=2)
    Y = stack.reshape(36, -1).astype(np.float64)
    M = np.median(Y, axis=0)
    groups = np.arange(36) % 10
    want = [_dark_level(Y[groups != g], M) for g in range(10)]
    got = _jackknife_levels(Y, M, groups)
    assert np.array_equal(got, want)
    # the levels differ between groups: the check compares fits, not one repeated value
    assert np.ptp(got) > 0


def test_downsample_saturation_only_at_the_level():
    from hcsflow.illumination.screening import downsample

    rng = np.random.default_rng(4)
    fields = rng.integers(100, 200, (4, 64, 64)).astype(np.uint16)
    fields[2, :8, :8] = 65535  # 64 of 4096 pixels at the uint16 maximum
    _, stats, _ = downsample(fields, cumulants=False)
    assert np.array_equal(stats.saturated, [0.0, 0.0, 64 / 4096, 0.0])
    # a saturation level above every value: none saturated, as counting would give
    _, stats, _ = downsample(fields.astype(np.float32), cumulants=False, saturation_value=7e4)
    assert np.array_equal(stats.saturated, np.zeros(4))
    _, stats, _ = downsample(fields, cumulants=False, saturation_value=150)
    expected = (fields.reshape(4, -1) >= 150).mean(axis=1)
    assert np.allclose(stats.saturated, expected, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def stack_dim_background():
    # the dim case: offset 120 with a 12-count gradient, background 30 counts above it
    # (well-to-well CV 0.2), vignetting to 0.45, gain 2, read noise 6
    return simulate_illumination_stack(
        48,
        (192, 192),
        vignetting="radial",
        corner=0.45,
        offset=120.0,
        dark_gradient=12.0,
        background=30.0,
        background_cv=0.2,
        gain=2.0,
        read_noise=6.0,
        image_mpp=1.0,
        seed=71,
    )


@pytest.mark.parametrize("error", [-6.0, 0.0, 6.0])
def test_cumulant_level_measures_the_dark_level_error(stack_dim_background, error):
    import torch
    import torch.nn.functional as F

    from hcsflow.illumination.darkfield import _cumulant_level
    from hcsflow.illumination.screening import downsample

    stack, flat, dark = stack_dim_background
    small, stats, _ = downsample(stack, working_size=48)
    n, h, w = small.shape

    def grid(a: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
        return F.adaptive_avg_pool2d(t, (h, w))[0, 0].double().numpy().ravel()

    S = grid(flat)
    S /= S.mean()
    # a dark-field off by a constant plus a multiple of the flat-field (which the baselines
    # absorb): the correction is minus the constant
    D = grid(dark) + error + 4.0 * S
    delta, var = _cumulant_level(stats.cumulants.reshape(n, 4, h * w), S, D)
    assert abs(delta + error) < 2.0
    assert 0 < var < 1.5**2


def test_cumulant_level_leaves_out_cells_near_zero(stack_dim_background):
    import torch
    import torch.nn.functional as F

    from hcsflow.illumination.darkfield import _cumulant_level
    from hcsflow.illumination.screening import downsample

    stack, flat, dark = stack_dim_background
    small, stats, _ = downsample(stack, working_size=48)
    n, h, w = small.shape
    t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))[None, None]
    S = F.adaptive_avg_pool2d(t, (h, w))[0, 0].double().numpy().ravel()
    S /= S.mean()
    C = stats.cumulants.reshape(n, 4, h * w).copy()
    D = np.full(h * w, 120.0)
    assert _cumulant_level(C, S, D) is not None
    # the same noise on a background lowered to 30 counts above 0: within 5 noise SDs of 0,
    # where a camera's clipping would bias the third cumulant, so no cell is used
    C[:, 1] -= 120.0
    assert _cumulant_level(C, S, D - 120.0) is None


def test_dark_level_left_out_on_dim_fields_when_the_skewness_does_not_determine_it():
    # offcenter vignetting, background 11 counts above an offset of 99 (with a 10-count
    # gradient), gain 0.6 and read noise 10.8: the photon noise's third cumulant (gain^2 x 11)
    # is lost in the read noise's, and nothing else pins the level under so little signal;
    # leaving it out is the safer flat-field
    from hcsflow.simulate import random_optics

    optics = random_optics(np.random.default_rng([1805, 0x16]))
    assert optics["background"] < 12 and optics["read_noise"] > 10
    stack, flat, dark = simulate_illumination_stack(
        64, (256, 256), seed=1805, image_mpp=1.0, **optics
    )
    res = il.fit(stack, "basic")
    d = res.details
    assert d["dark_determined"] is False
    assert "skewness does not determine it" in d["dark_reason"]
    plain = il.fit(stack, "basic", darkfield=False)
    np.testing.assert_array_equal(res.flatfield, plain.flatfield)
    assert rmse(res.flatfield, flat / flat.mean()) < 0.06


def test_dark_fit_errors_weigh_contrast_and_pattern():
    from hcsflow.illumination.basic import DarkFit

    # without a pattern: the contrast test, sigma * C against d h / (1 + d h) * C
    fit = DarkFit(100.0, 0.01, 0.2, "regression", 0.1, 0.0, 0.0)
    keep, drop = fit.errors()
    assert keep == pytest.approx(0.2 * 0.1) and drop == pytest.approx(0.5 * 0.1)
    # a pattern's noise that accounts for the whole fitted contrast: no contrast is left to
    # lose, keeping costs the noise over the baseline, leaving out the pattern over b + d
    fit = DarkFit(100.0, 0.01, 0.2, "no_slope", 0.03, 2.0, 3.0)
    keep, drop = fit.errors()
    assert keep == pytest.approx(0.03) and drop == pytest.approx(2.0 * 0.01 / 2.0)
    assert DarkFit(100.0, 0.01, None, "regression", 0.1, 0.0, 0.0).errors()[0] == np.inf


def test_alternatives_where_one_estimate_is_biased():
    from hcsflow.illumination.basic import _alternatives, _combine_all

    # estimates that agree within their noise: no alternative
    agree = [(1.0, 0.01), (1.05, 0.01), (0.98, 0.0004)]
    value, _, pure = _combine_all(agree)
    assert _alternatives(agree, value, pure) == []
    # a precise estimate far from two that agree: if it is biased, the truth lies with the
    # others (1.3); if one of the others is, with the precise one (about 1.0)
    est = [(1.3, 0.01), (1.35, 0.05), (0.97, 0.001)]
    value, var, pure = _combine_all(est)
    assert value < 1.05 and pure < 0.002 < var  # the disagreement is not in the pure variance
    alts = _alternatives(est, value, pure)
    assert len(alts) == 3
    far = max(alts, key=lambda a: a[0])
    assert far[0] == pytest.approx(1.3, abs=0.03) and far[1] == pytest.approx(0.0083, rel=0.2)
    assert all(abs(a[0] - value) < 0.05 for a in alts if a is not far)


def test_dark_test_weighs_the_contrast_lost_at_each_hypothesis():
    from hcsflow.illumination.basic import DarkFit, _test_dark_level

    # a level of 100 (d h = 0.5, leaving it out loses a third of the contrast) that one
    # estimate puts at 180 (d h = 0.9): keeping 100 is then wrong by a factor 0.4, more than
    # the third, but leaving it out would lose 0.47 of the contrast there: keep
    fit = DarkFit(100.0, 0.005, 0.02, "regression", 0.1, 0.0, 0.0, alternatives=((180.0, 0.0),))
    (lvl0, sd0), (lvl1, sd1) = fit.hypotheses()
    assert (lvl0, sd0) == (100.0, 0.02) and lvl1 == 180.0 and sd1 == pytest.approx(0.4)
    assert fit.lost() == pytest.approx(1 / 3) and fit.lost(180.0) == pytest.approx(0.9 / 1.9)
    info = {"dark_level": 100.0}
    assert not _test_dark_level(info, fit, 1.0)
    assert info["dark_determined"] and info["dark_level_alternatives"] == [[180.0, 0.4]]
    # the same disagreement towards no level at all: leaving it out loses nothing there
    fit = DarkFit(100.0, 0.005, 0.02, "regression", 0.1, 0.0, 0.0, alternatives=((0.0, 0.0),))
    info = {"dark_level": 100.0}
    assert _test_dark_level(info, fit, 1.0)
    assert "if the level is 0" in info["dark_reason"] and info["dark_level"] == 0.0
    # the flat-field's own noise counts against keeping a level under a dim background
    quiet = DarkFit(100.0, 0.1, 0.01, "regression", 0.05, 0.0, 0.0)
    noisy = DarkFit(100.0, 0.1, 0.01, "regression", 0.05, 0.0, 0.0, flat_sd=0.04)
    assert noisy.errors()[0] > quiet.errors()[0] and noisy.errors()[1] < noisy.errors()[0]


def test_surface_noise_matches_the_spread_of_independent_surfaces():
    from hcsflow.illumination.surfaces import _shrunk_mean, _surface_noise

    shape = (16, 16)
    mask = np.zeros(shape, bool)
    mask[:6, :6] = True
    yy, xx = np.mgrid[:16, :16] / 15.0
    truth = 1.0 + 0.2 * (xx - 0.5) + 0.1 * np.cos(np.pi * yy)
    fits, predicted = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        values = truth.ravel()[None, :] + rng.normal(0, 0.3, (40, 256))
        w = np.ones_like(values)
        surf, _ = _shrunk_mean(values, w, w, np.ones(256), mask, shape, surface=True)
        fits.append(surf)
        predicted.append(_surface_noise(values, w, w, surf, mask, shape))
    actual = float(np.sqrt(np.mean((np.array(fits) - truth.ravel()) ** 2)))
    assert np.mean(predicted) == pytest.approx(actual, rel=0.35)
    assert 0.005 < np.mean(predicted) < 0.3 / np.sqrt(40)


def test_shrunk_mean_counts_noise_the_groups_do_not_see():
    from hcsflow.illumination.surfaces import _coefficient_noise, _shrunk_mean

    # every field carries the same error (a dark-field pattern's, subtracted from all): the
    # groups of fields cannot see it, so alone it passes for a surface; given its variance per
    # coefficient, it is told from one
    shape = (16, 16)
    mask = np.zeros(shape, bool)
    mask[:6, :6] = True
    yy, xx = np.mgrid[:16, :16] / 15.0
    common = 0.02 * np.cos(np.pi * xx) + 0.015 * np.cos(2 * np.pi * yy)
    rng = np.random.default_rng(3)
    values = 1.0 + common.ravel()[None, :] + rng.normal(0, 0.05, (40, 256))
    w = np.ones_like(values)
    alone, _ = _shrunk_mean(values, w, w, np.ones(256), mask, shape)
    noise_var = _coefficient_noise(common.ravel(), mask, shape)
    assert noise_var[0, 0] == 0 and noise_var[1, 0] > 0 and not noise_var[8:, :].any()
    told, _ = _shrunk_mean(values, w, w, np.ones(256), mask, shape, extra=noise_var)
    assert np.std(alone) > 0.015
    assert np.std(told) < 0.3 * np.std(alone)


def test_dark_level_left_out_when_only_a_bound_under_a_dim_uniform_field():
    # no vignetting, background 7 counts above an offset of 328 with a dark gradient: the
    # contrast does not grow with brightness, the level is only the darkest value, and the
    # dark-field pattern's noise divided by a baseline of a few counts would shade the
    # flat-field by more than leaving the level out costs
    stack, flat, dark = simulate_illumination_stack(
        48,
        (192, 192),
        vignetting="none",
        offset=328.0,
        dark_gradient=-8.0,
        background=7.0,
        gain=4.5,
        read_noise=9.0,
        background_cv=0.35,
        image_mpp=1.0,
        seed=61,
    )
    res = il.fit(stack, "basic")
    d = res.details
    assert d["dark_level_from"] == "no_slope"
    assert d["dark_determined"] is False
    assert d["dark_error_kept"] > d["dark_error_left_out"]
    # the comparison of predicted errors leaves it out; the dim-field test of the estimates'
    # disagreement, which comes first, may already have
    assert "pattern noise" in d["dark_reason"] or "estimates disagree" in d["dark_reason"]
    plain = il.fit(stack, "basic", darkfield=False)
    np.testing.assert_array_equal(res.flatfield, plain.flatfield)
    assert rmse(res.flatfield, flat / flat.mean()) < 0.01


@pytest.mark.parametrize("method", ["basic", "mean_smooth"])
def test_given_offset_and_dark_frame_are_used_as_given(stack_above_offset, tmp_path, method):
    stack, flat, dark = stack_above_offset
    res = il.fit(stack, method, dark=120.0)
    assert res.details["dark"] == "number"
    np.testing.assert_array_equal(res.darkfield, np.full(SHAPE, 120.0, np.float32))
    frame = il.fit(stack, method, dark=dark)
    assert frame.details["dark"] == "frame"
    np.testing.assert_array_equal(frame.darkfield, dark.astype(np.float32))
    # the flat-field is the fit of the fields minus the given frame
    assert rmse(frame.flatfield, flat) < 0.5 * rmse(np.ones(SHAPE), flat)
    for path in (tmp_path / "dark.npy", tmp_path / "dark.tif"):
        if path.suffix == ".npy":
            np.save(path, dark)
        else:
            tifffile.imwrite(path, dark)
        from_file = il.fit(stack, method, dark=str(path))
        np.testing.assert_array_equal(from_file.darkfield, frame.darkfield)
        np.testing.assert_array_equal(from_file.flatfield, frame.flatfield)


def test_given_dark_errors_name_the_problem(stack_above_offset, tmp_path):
    stack = stack_above_offset[0][:12]
    with pytest.raises(ValueError, match="dark frame .*missing.tif does not exist"):
        il.fit(stack, "basic", dark=str(tmp_path / "missing.tif"))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"dark frame .*wrong.npy has shape \(8, 8\)"):
        il.fit(stack, "basic", dark=str(wrong))
    with pytest.raises(ValueError, match="must be >= 0"):
        il.fit(stack, "basic", dark=-5.0)
    with pytest.raises(ValueError, match="contradicts darkfield=False"):
        il.fit(stack, "basic", dark=100.0, darkfield=False)


def test_config_dark_errors_name_the_key(tmp_path):
    from hcsflow.config import _check_dark

    def check(dark, darkfield=True):
        section = {"dark": dark, "darkfield": darkfield}
        return section, _check_dark(section)

    section, problems = check("100")
    assert problems == [] and section["dark"] == 100.0
    assert check("auto")[1] == [] and check("none")[1] == []
    (line,) = check(-1)[1]
    assert line.startswith("- config key 'illumination.dark'") and ">= 0" in line
    (line,) = check(str(tmp_path / "nope.tif"))[1]
    assert "'illumination.dark'" in line and "nope.tif does not exist" in line
    bad = tmp_path / "stack.npy"
    np.save(bad, np.zeros((2, 4, 4)))
    (line,) = check(str(bad))[1]
    assert "'illumination.dark'" in line and "stack.npy has shape (2, 4, 4)" in line
    (line,) = check(100.0, darkfield=False)[1]
    assert "'illumination.dark'" in line and "'illumination.darkfield' is false" in line
    good = tmp_path / "dark.npy"
    np.save(good, np.full((4, 4), 100.0))
    assert check(str(good))[1] == []


def test_surface_test_finds_a_weak_shading_in_the_lowest_rings():
    from hcsflow.illumination.surfaces import (
        LOW_RINGS,
        _lowpass_mask,
        _ring_index,
        _surface_found,
    )

    shape = (64, 64)
    sel = _lowpass_mask(shape, 4.0)
    sel[0, 0] = False
    ring = _ring_index(shape)
    low = sel & (ring <= LOW_RINGS)
    m, m_low = int(sel.sum()), int(low.sum())
    z = np.where(sel, 1.0, 0.0)  # every coefficient at its noise level: no surface
    assert _surface_found(z, ring, sel) == (False, False)
    # a shading in the lowest rings, too weak for the test over all coefficients
    z_weak = z.copy()
    z_weak[low] = 5.0
    assert float(z_weak[sel].sum()) < m + 3 * np.sqrt(2 * m)
    assert _surface_found(z_weak, ring, sel) == (True, True)
    z_noise = z.copy()
    z_noise[low] = 2.0  # twice the noise in m_low coefficients: within chance
    assert 2.0 * m_low < 26.2 and _surface_found(z_noise, ring, sel) == (False, False)
    # a surface spread over all coefficients: found, but not by the lowest rings
    assert _surface_found(np.where(sel, 2.0, 0.0), ring, sel) == (True, False)


def test_shrunk_mean_keeps_a_given_surface_decision_and_holds_a_low_frequency_one():
    from hcsflow.illumination.surfaces import _lowpass_mask, _shrunk_mean

    rng = np.random.default_rng(0)
    shape = (16, 16)
    y, x = np.mgrid[-1:1:16j, -1:1:16j]
    flat = 1.0 - 0.1 * (x**2 + y**2)
    values = flat.ravel()[None, :] + rng.normal(0, 0.05, (40, 256))
    w = np.ones_like(values)
    mask = _lowpass_mask(shape, 4.0)
    tested, hold = _shrunk_mean(values, w, w, np.ones(256), mask, shape)
    assert hold and np.ptp(tested) > 0.1  # a shading in the lowest rings: held
    const, kept = _shrunk_mean(values, w, w, np.ones(256), mask, shape, surface=False)
    assert not kept and np.ptp(const) < 1e-9
    forced, kept = _shrunk_mean(values, w, w, np.ones(256), mask, shape, surface=True)
    assert kept
    np.testing.assert_allclose(forced, tested)
