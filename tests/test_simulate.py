"""Tests of the synthetic Cell Painting screen (hcsflow.simulate)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from hcsflow import cli
from hcsflow.platemap import PlatemapError
from hcsflow.simulate import (
    CHANNELS,
    MOA_PROFILES,
    VIGNETTING,
    background_level,
    batch_appearance,
    default_platemap,
    make_illumination,
    random_appearance,
    simulate_field,
    simulate_illumination_stack,
    simulate_plate,
    truth_cell_table,
)

SHAPE = (160, 160)


@pytest.fixture(scope="module")
def field():
    return simulate_field(3, SHAPE, density=2.0)


def test_field_types_and_shapes(field):
    assert field.image.dtype == np.uint16 and field.image.shape == (5, *SHAPE)
    assert field.nuclei.dtype == np.uint32 and field.cells.dtype == np.uint32
    assert field.flatfield.shape == (5, *SHAPE) and field.darkfield.shape == (5, *SHAPE)
    assert field.info["n_cells"] == int(field.cells.max()) > 3


def test_same_seed_identical_different_seed_differs(field):
    again = simulate_field(3, SHAPE, density=2.0)
    assert again.image.tobytes() == field.image.tobytes()
    assert np.array_equal(again.cells, field.cells)
    other = simulate_field(4, SHAPE, density=2.0)
    assert other.image.tobytes() != field.image.tobytes()


def _varied_field(case: int):
    if case == 0:
        return simulate_field(3, SHAPE, density=2.0)
    if case == 4:
        return simulate_field(9, (128, 128), phenotype={"mitotic_arrest": 0.5, "toxicity": 0.3})
    app = random_appearance(np.random.default_rng(case))
    return simulate_field(case, (128, 128), density=1.5, appearance=app)


@pytest.mark.parametrize("case", range(5))
def test_one_nucleus_per_cell_same_label(case):
    field = _varied_field(case)
    nuc, cells = field.nuclei, field.cells
    n = int(cells.max())
    assert set(np.unique(nuc)) == set(range(n + 1))
    assert set(np.unique(cells)) == set(range(n + 1))
    # every nucleus pixel lies in the cell with the same label
    inside = nuc > 0
    assert np.array_equal(cells[inside], nuc[inside])
    # each cell and each nucleus is one connected component
    for lab in range(1, n + 1):
        assert ndi.label(cells == lab)[1] == 1
        assert ndi.label(nuc == lab)[1] == 1
    assert np.all(np.bincount(cells.ravel())[1:] > np.bincount(nuc.ravel())[1:] * 0.99)


def _corrected(f):
    return (f.image.astype(np.float32) - f.darkfield) / f.flatfield


def test_stains_agree_with_masks(field):
    img = _corrected(field)
    nuc, cells = field.nuclei > 0, field.cells > 0
    cyto = cells & ~nuc
    dna = img[CHANNELS.index("DNA")]
    assert dna[nuc].mean() > 4 * dna[cyto].mean()
    # AGP: borders between / around cells brighter than cell interiors
    agp = img[CHANNELS.index("AGP")]
    border = field.cells != ndi.grey_erosion(field.cells, size=3)
    border &= cells
    interior = cells & ~ndi.binary_dilation(border, iterations=3) & ~nuc
    assert agp[border].mean() > 1.5 * agp[interior].mean()
    # ER and Mito live in the cytoplasm
    for ch in ("ER", "Mito"):
        x = img[CHANNELS.index(ch)]
        assert x[cyto].mean() > 3 * x[~cells].mean()


def test_background_is_dark_offset():
    field = simulate_field(3, (200, 200), density=0.6)
    raw = field.image.astype(np.float32)
    bg = ndi.binary_erosion(field.cells == 0, iterations=10)
    assert bg.sum() > 100
    for c in range(len(CHANNELS)):
        excess = np.median(raw[c][bg] - field.darkfield[c][bg])
        signal = np.percentile(raw[c][field.cells > 0] - field.darkfield[c][field.cells > 0], 90)
        assert 0 <= excess < 0.25 * signal, CHANNELS[c]
    assert 80 < field.darkfield.mean() < 150


@pytest.mark.parametrize("kind", VIGNETTING)
def test_illumination(kind):
    flat, dark = make_illumination((64, 96), vignetting=kind, seed=1)
    assert flat.shape == dark.shape == (5, 64, 96)
    assert np.allclose(flat.mean(axis=(1, 2)), 1.0, atol=1e-5)
    if kind == "none":
        assert np.allclose(flat, 1.0)
    else:
        assert flat.min() < 0.97 < 1.02 < flat.max()
    flat0, dark0 = make_illumination((64, 96), vignetting=kind, dark_offset=False, seed=1)
    assert np.all(dark0 == 0) and np.all(dark > 50)


def test_flat_field_applied_in_raw():
    flat, dark = make_illumination(SHAPE, vignetting="offcenter", seed=2)
    stack, f, d = simulate_illumination_stack(
        12, SHAPE, vignetting="offcenter", seed=2, density=0.5, channel="ER"
    )
    assert stack.shape == (12, *SHAPE) and stack.dtype == np.uint16
    assert np.allclose(f, flat[1]) and np.allclose(d, dark[1])
    # the mean of many fields follows the flat-field
    mean = ndi.gaussian_filter(stack.astype(np.float32).mean(0) - d, 12)
    assert np.corrcoef(mean.ravel(), f.ravel())[0, 1] > 0.6


def test_out_of_focus_is_blurred():
    sharp = simulate_field(5, SHAPE, density=2.0)
    blur = simulate_field(5, SHAPE, density=2.0, out_of_focus=True)
    lap = []
    for x in (sharp, blur):
        dna = _corrected(x)[0]
        lap.append((ndi.gaussian_filter(dna, 1.5) - ndi.gaussian_filter(dna, 4)).std())
    assert lap[1] < 0.5 * lap[0] and blur.info["out_of_focus"]


def test_random_appearance_varies_and_is_valid():
    rng = np.random.default_rng(0)
    apps = [random_appearance(rng) for _ in range(4)]
    assert len({a["cell_scale"] for a in apps}) == 4
    f = simulate_field(1, (96, 96), appearance=apps[0])
    assert f.image.shape == (5, 96, 96)
    with pytest.raises(ValueError, match="unknown appearance"):
        simulate_field(1, (96, 96), appearance={"colour": 1})


def test_bad_phenotype_key():
    with pytest.raises(ValueError, match="nucleus_sise"):
        simulate_field(1, (64, 64), phenotype={"nucleus_sise": 1})


@pytest.mark.parametrize("n_wells,n_neg", [(96, 12), (384, 48)])
def test_default_platemap(n_wells, n_neg):
    pm = default_platemap(n_wells)
    assert len(pm) == n_wells and pm["well"].is_unique
    assert set(pm["role"]) <= {"negcon", "poscon", "trt", "empty"}
    assert (pm["role"] == "negcon").sum() >= n_neg
    assert (pm["role"] == "poscon").sum() >= 3
    trt = pm[pm["role"] == "trt"]
    assert trt["moa"].nunique() >= 7
    per_moa = trt[trt["moa"].isin(list(MOA_PROFILES))].groupby("moa")["compound"].nunique()
    assert per_moa.min() >= 3
    assert trt.groupby("compound")["dose_um"].nunique().min() >= 3
    assert (trt["moa"] == "inactive").any()
    assert default_platemap(n_wells).equals(pm)


def test_phenotype_shifts_features():
    base = simulate_field(7, (200, 200), density=2.0)
    big = simulate_field(7, (200, 200), density=2.0, phenotype={"nucleus_size": 0.3})
    area = [np.bincount(f.nuclei.ravel())[1:].mean() for f in (base, big)]
    assert area[1] > 1.4 * area[0]


@pytest.fixture(scope="module")
def plate_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plate")
    pm = default_platemap(96)
    topo = pm[(pm["moa"] == "topoisomerase inhibitor") & (pm["dose_um"] == 10.0)].head(3)
    rows = pd.concat([pm[pm["role"] == "negcon"].head(3), topo, pm[pm["role"] == "empty"]])
    rows.to_csv(out / "map.csv", index=False)
    code = cli.main(
        [
            "simulate",
            str(out / "p"),
            "--plate",
            "TP1",
            "--sites",
            "2",
            "--size",
            "160",
            "--seed",
            "5",
            "--workers",
            "2",
            "--platemap",
            str(out / "map.csv"),
        ]
    )
    assert code == 0
    return out / "p"


def test_cli_writes_promised_files(plate_dir):
    pm = pd.read_csv(plate_dir / "platemap.csv")
    assert list(pm.columns) == ["well", "compound", "dose_um", "role", "moa", "target"]
    pat = re.compile(r"^(?P<plate>TP1)_(?P<well>[A-P]\d\d)_s(?P<site>\d+)_w(?P<ch>[1-5])\.tif$")
    names = sorted(p.name for p in (plate_dir / "images").iterdir())
    assert len(names) == len(pm) * 2 * 5
    for n in names:
        m = pat.match(n)
        assert m and m["well"] in set(pm["well"])
        img = tifffile.imread(plate_dir / "images" / n)
        assert img.dtype == np.uint16 and img.shape == (160, 160)
    truth = plate_dir / "truth"
    for name in (
        "fields.csv",
        "compounds.csv",
        "treatments.csv",
        "simulation.json",
        "illumination.npz",
    ):
        assert (truth / name).exists(), name
    ill = np.load(truth / "illumination.npz")
    assert ill["flatfield"].shape == (5, 160, 160)
    assert np.allclose(ill["flatfield"].mean(axis=(1, 2)), 1, atol=1e-5)
    assert list(ill["channels"]) == list(CHANNELS)
    m = np.load(truth / "masks" / f"{pm['well'][0]}_s1.npz")
    assert m["nuclei"].dtype == np.uint32 and m["cells"].shape == (160, 160)
    fields = pd.read_csv(truth / "fields.csv")
    assert {
        "well",
        "site",
        "n_cells",
        "out_of_focus",
        "n_mitotic",
        "n_apoptotic",
        "n_debris",
    } <= set(fields.columns)
    treat = pd.read_csv(truth / "treatments.csv")
    assert treat.loc[treat["compound"] == "DMSO", "truly_active"].eq(False).all()
    sim = json.loads((truth / "simulation.json").read_text())
    assert sim["seed"] == 5 and sim["plate"] == "TP1"


def test_plate_independent_of_workers(plate_dir, tmp_path):
    pm = pd.read_csv(plate_dir / "platemap.csv", keep_default_na=False)
    simulate_plate(tmp_path, plate="TP1", sites=2, size=160, seed=5, platemap=pm, n_workers=1)
    for p in sorted((plate_dir / "images").iterdir())[:10]:
        assert (tmp_path / "images" / p.name).read_bytes() == p.read_bytes()


def test_truth_cell_table(plate_dir):
    df = truth_cell_table(plate_dir)
    fields = pd.read_csv(plate_dir / "truth" / "fields.csv")
    assert len(df) == fields["n_cells"].sum()
    for col in (
        "Metadata_Plate",
        "Metadata_ObjectNumber",
        "Metadata_Compound",
        "Metadata_Dose",
        "Metadata_MoA",
        "Nuclei_Location_Center_X",
        "Cells_AreaShape_Solidity",
        "Nuclei_AreaShape_Perimeter",
        "Cytoplasm_Intensity_MeanIntensity_Mito",
        "Cells_Intensity_StdIntensity_AGP",
    ):
        assert col in df.columns, col
    by_role = df.groupby("Metadata_MoA")["Nuclei_AreaShape_Area"].mean()
    assert by_role["topoisomerase inhibitor"] > 1.3 * by_role["control"]


def test_bad_platemap_names_the_well(tmp_path):
    pm = default_platemap(96).head(2).copy()
    pm.loc[1, "well"] = "Q01"
    with pytest.raises(ValueError, match="Q01"):
        simulate_plate(tmp_path, platemap=pm, sites=1, size=32)
    pm.loc[1, "well"] = pm.loc[0, "well"]
    with pytest.raises(ValueError, match="more than once"):
        simulate_plate(tmp_path, platemap=pm, sites=1, size=32)
    pm = default_platemap(96).head(1).assign(well="a1")
    simulate_plate(tmp_path, platemap=pm, sites=1, size=32, n_workers=1)
    assert (tmp_path / "images" / "SIM-P1_A01_s1_w5.tif").exists()


def test_simulated_platemap_checked_like_a_file(tmp_path):
    """A plate map given as a table meets the same checks as a plate-map CSV."""
    pm = default_platemap(96).head(3).copy()
    bad_role = pm.assign(role=["negcon", "control", "trt"])
    with pytest.raises(PlatemapError, match=r"simulated plate map: unknown role.*control"):
        simulate_plate(tmp_path, platemap=bad_role, sites=1, size=32)
    bad_dose = pm.astype({"dose_um": object})
    bad_dose.loc[2, "dose_um"] = "ten"
    with pytest.raises(PlatemapError, match="dose_um is not a number"):
        simulate_plate(tmp_path, platemap=bad_dose, sites=1, size=32)
    assert not (tmp_path / "images").exists()


def test_replicate_plates_share_compounds(tmp_path):
    pm = default_platemap(96)
    pm = pm[pm["moa"].isin(["SERCA inhibitor", "control"])].head(4)
    for seed in (1, 2):
        simulate_plate(tmp_path / str(seed), platemap=pm, sites=1, size=48, seed=seed, n_workers=1)
    a, b = (pd.read_csv(tmp_path / s / "truth" / "compounds.csv") for s in ("1", "2"))
    assert len(a) and a.equals(b)
    ta, tb = (pd.read_csv(tmp_path / s / "truth" / "treatments.csv") for s in ("1", "2"))
    assert ta.equals(tb)
    name = sorted((tmp_path / "1" / "images").iterdir())[0].name
    assert (tmp_path / "1" / "images" / name).read_bytes() != (
        tmp_path / "2" / "images" / name
    ).read_bytes()


def test_cli_reports_bad_arguments(tmp_path, capsys):
    code = cli.main(["simulate", str(tmp_path), "--platemap", str(tmp_path / "nope.csv")])
    assert code == 2 and "nope.csv" in capsys.readouterr().err
    code = cli.main(["simulate", str(tmp_path), "--sites", "0"])
    assert code == 2 and "sites" in capsys.readouterr().err


def test_background_level_is_lognormal_with_mean_one():
    levels = np.array([background_level([3, w], 0.3) for w in range(2000)])
    assert abs(levels.mean() - 1) < 0.03
    assert 0.27 < levels.std() / levels.mean() < 0.33
    assert levels.min() > 0
    assert background_level([3, 7], 0.0) == 1.0
    assert background_level([3, 7], 0.3) == background_level([3, 7], 0.3)  # seeded


def test_stack_background_varies_by_well():
    # no cells: each field is its background level times the flat-field, plus the dark-field
    kw = dict(density=0.0, seed=2, background_jitter=0.0, sites=3)
    const, flat, dark = simulate_illumination_stack(6, (48, 48), background_cv=0.0, **kw)
    varied, _, _ = simulate_illumination_stack(6, (48, 48), background_cv=0.5, **kw)
    level = lambda s: np.median((s.astype(np.float32) - dark) / flat, axis=(1, 2))  # noqa: E731
    ratio = level(varied) / level(const)  # the per-field brightness cancels
    np.testing.assert_allclose(ratio[:3], ratio[0], rtol=0.06)  # one well, one level
    np.testing.assert_allclose(ratio[3:], ratio[3], rtol=0.06)
    assert abs(ratio[0] / ratio[3] - 1) > 0.2  # two wells, two levels
    with pytest.raises(ValueError, match="background_cv"):
        simulate_illumination_stack(2, (32, 32), background_cv=-0.1)


def test_plate_background_variation_is_deterministic(tmp_path):
    pm = default_platemap(96).head(2)
    for k in ("a", "b"):
        simulate_plate(tmp_path / k, platemap=pm, sites=1, size=32, background_cv=0.3, n_workers=1)
    name = sorted((tmp_path / "a" / "images").iterdir())[0].name
    assert (tmp_path / "a" / "images" / name).read_bytes() == (
        tmp_path / "b" / "images" / name
    ).read_bytes()
    params = json.loads((tmp_path / "a" / "truth" / "simulation.json").read_text())
    assert params["background_cv"] == 0.3


def test_optics_options_set_offset_gradient_vignetting_and_background():
    kw = dict(vignetting="radial", corner=0.45, offset=300.0, dark_gradient=12.0, seed=3)
    flat, dark = make_illumination((64, 64), **kw)
    assert np.allclose(dark.mean(axis=(1, 2)), 300.0, atol=1e-3)
    assert np.allclose(dark[:, -1, :] - dark[:, 0, :], 12.0, atol=1e-3)
    ratio = flat[:, 0, 0] / flat.max(axis=(1, 2))  # corner / centre of the radial fall-off
    assert np.all(ratio < 0.47) and np.all(ratio > 0.43)
    stack, f, d = simulate_illumination_stack(
        6,
        (48, 48),
        background=1000.0,
        gain=1.0,
        read_noise=2.0,
        density=0.0,
        background_cv=0.0,
        background_jitter=0.0,
        **kw,
    )
    above = float(np.median(stack)) - float(d.mean())
    assert 800 < above < 1200
    with pytest.raises(ValueError, match="corner"):
        make_illumination((8, 8), corner=0.0)
    with pytest.raises(ValueError, match="background"):
        simulate_illumination_stack(2, (32, 32), background=-1.0)


def test_random_optics_draws_wide_ranges():
    from hcsflow.simulate import random_optics

    draws = [random_optics(np.random.default_rng(s)) for s in range(200)]
    offsets = [d["offset"] for d in draws]
    backgrounds = [d["background"] for d in draws]
    assert 0 <= min(offsets) < 50 and 450 < max(offsets) <= 500
    assert 5 <= min(backgrounds) < 10 and 1000 < max(backgrounds) <= 2000
    assert {d["vignetting"] for d in draws} == set(VIGNETTING)
    assert random_optics(np.random.default_rng(7)) == random_optics(np.random.default_rng(7))


def _plate_signal(folder) -> np.ndarray:
    """Mean flat-field-corrected signal above the dark-field per channel, shape (5,)."""
    ill = np.load(folder / "truth" / "illumination.npz")
    out = []
    for c in range(5):
        imgs = sorted((folder / "images").glob(f"*_w{c + 1}.tif"))
        vals = [
            ((tifffile.imread(p).astype(np.float64) - ill["darkfield"][c]) / ill["flatfield"][c])
            for p in imgs
        ]
        out.append(np.mean(vals))
    return np.array(out)


def test_plate_appearance_scales_the_stains_it_names(tmp_path):
    pm = default_platemap(96)
    pm = pm[pm["role"] == "negcon"].head(2)
    kw = dict(platemap=pm, sites=1, size=64, seed=4, n_workers=1)
    simulate_plate(tmp_path / "a", **kw)
    simulate_plate(
        tmp_path / "b", appearance={"channel_brightness": (2.0, 1.0, 1.0, 1.0, 0.5)}, **kw
    )
    ratio = _plate_signal(tmp_path / "b") / _plate_signal(tmp_path / "a")
    np.testing.assert_allclose(ratio, [2.0, 1.0, 1.0, 1.0, 0.5], rtol=0.05)
    rec = json.loads((tmp_path / "b" / "truth" / "simulation.json").read_text())
    assert rec["plate_appearance"]["channel_brightness"] == [2.0, 1.0, 1.0, 1.0, 0.5]
    a = json.loads((tmp_path / "a" / "truth" / "simulation.json").read_text())
    assert a["plate_appearance"] == {}


def test_plate_appearance_rejects_bad_keys_and_values(tmp_path):
    pm = default_platemap(96).head(1)
    with pytest.raises(ValueError, match=r"unknown key.*cell_scale"):
        simulate_plate(tmp_path, platemap=pm, sites=1, size=32, appearance={"cell_scale": 2})
    with pytest.raises(ValueError, match="needs 5 values"):
        simulate_plate(
            tmp_path, platemap=pm, sites=1, size=32, appearance={"channel_brightness": (1, 2)}
        )
    with pytest.raises(ValueError, match=r"'gain'\] must be > 0"):
        simulate_plate(tmp_path, platemap=pm, sites=1, size=32, appearance={"gain": 0})
    assert not (tmp_path / "images").exists()


def test_batch_appearance_is_seeded_and_within_its_ranges():
    a = batch_appearance(np.random.default_rng(41))
    assert a == batch_appearance(np.random.default_rng(41))
    assert a != batch_appearance(np.random.default_rng(42))
    draws = [batch_appearance(np.random.default_rng(s)) for s in range(200)]
    cb = np.array([d["channel_brightness"] for d in draws])
    assert cb.min() >= 0.7 and cb.max() <= 1.4 and cb.std(axis=0).min() > 0.1
    assert 0.6 <= min(d["membrane"] for d in draws) and max(d["membrane"] for d in draws) <= 1.6


def test_cli_batch_appearance(tmp_path):
    pm = default_platemap(96).head(1)
    pm.to_csv(tmp_path / "pm.csv", index=False)
    args = ["simulate", str(tmp_path / "p"), "--platemap", str(tmp_path / "pm.csv")]
    args += ["--sites", "1", "--size", "32", "--workers", "1", "--batch-appearance", "7"]
    assert cli.main(args) == 0
    rec = json.loads((tmp_path / "p" / "truth" / "simulation.json").read_text())
    expected = batch_appearance(np.random.default_rng(7))
    assert rec["plate_appearance"]["gain"] == pytest.approx(expected["gain"])
