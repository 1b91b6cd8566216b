"""Per-well dispersion features and the projection of single cells learned on control cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hcsflow import profiling as P
from hcsflow.profiling import cellspace as C
from hcsflow.profiling.dispersion import group_dispersion, parse_statistics


def _cells(rng: np.random.Generator, n_wells: int = 6, per_well: int = 60) -> pd.DataFrame:
    """Two plates of wells; wells 0 and 1 of each plate are controls; treated wells shift
    feature F2 (a low-variance direction of the controls) by 1.5."""
    rows = []
    for plate in ("P1", "P2"):
        offset = 0.0 if plate == "P1" else 3.0  # a plate effect the control units remove
        for w in range(n_wells):
            role = "negcon" if w < 2 else "trt"
            base = rng.normal(size=(per_well, 2))
            x = np.column_stack(
                [
                    5 * base[:, 0] + offset,
                    5 * base[:, 0] + 0.5 * base[:, 1] + offset,
                    rng.normal(size=per_well) * 0.3 + (1.5 if role == "trt" else 0.0),
                    rng.normal(size=per_well),
                ]
            )
            df = pd.DataFrame(x, columns=["Cells_F0", "Cells_F1", "Cells_F2", "Cells_F3"])
            df.insert(0, "Metadata_Plate", plate)
            df.insert(1, "Metadata_Well", f"A{w + 1:02d}")
            df.insert(2, "Metadata_Role", role)
            df.insert(3, "Metadata_ObjectNumber", np.arange(1, per_well + 1))
            df["Cells_Location_Center_X"] = rng.uniform(0, 100, per_well)
            rows.append(df)
    return pd.concat(rows, ignore_index=True)


def _write(cells: pd.DataFrame, tmp_path, plate: str) -> list:
    """The plate's cells as two shard files (wells 1-3 and 4-6)."""
    sub = cells[cells.Metadata_Plate == plate]
    paths = []
    for k, wells in enumerate((("A01", "A02", "A03"), ("A04", "A05", "A06"))):
        path = tmp_path / f"{plate}_{k}.parquet"
        sub[sub.Metadata_Well.isin(wells)].to_parquet(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------- dispersion


def test_group_dispersion_equals_numpy_with_missing_values():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, size=300)
    x[::7] = np.nan
    x[200:210] = np.nan  # group 2 below has NaN only in part; group 4 is all NaN
    x[279:300] = np.nan
    codes = np.repeat(np.arange(5), [50, 90, 100, 39, 21])
    x[290] = 1.0  # one value in the last group: std undefined
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes))])
    stats = ["mad", "iqr", "std", "q10", "q90", "q25"]
    out = group_dispersion([x.astype(np.float32), x], order, bounds, stats)
    assert out.shape == (5, 12)
    for g in range(4):
        v = x[codes == g]
        v = v[~np.isnan(v)].astype(np.float64)
        med = np.median(v)
        ref = [
            np.median(np.abs(v - med)),
            np.quantile(v, 0.75) - np.quantile(v, 0.25),
            np.std(v, ddof=1),
            np.quantile(v, 0.1),
            np.quantile(v, 0.9),
            np.quantile(v, 0.25),
        ]
        # statistic-major: column 2 * s is the float32 copy, 2 * s + 1 the float64 one
        np.testing.assert_allclose(out[g, 1::2], ref, rtol=1e-12)
        np.testing.assert_allclose(out[g, 0::2], ref, rtol=1e-6)
    last = out[4, 1::2]
    assert last[0] == 0 and last[1] == 0 and np.isnan(last[2]) and last[3] == 1.0


def test_dispersion_names_are_checked():
    assert parse_statistics(["q5", "q95", "mad"]).tolist() == [0.05, 0.95, -1.0]
    for bad in (["q0"], ["q100"], ["median"], ["mad", "mad"]):
        with pytest.raises(ValueError, match="dispersion"):
            parse_statistics(bad)


def test_aggregate_with_dispersion_from_frames_and_from_files(tmp_path):
    cells = _cells(np.random.default_rng(2))
    one = cells[cells.Metadata_Plate == "P1"]
    prof = P.aggregate(one, dispersion=["mad", "q90"])
    assert "Cells_F0__mad" in prof and "Cells_F3__q90" in prof
    a05 = one[one.Metadata_Well == "A05"]["Cells_F2"].to_numpy()
    row = prof[prof.Metadata_Well == "A05"].iloc[0]
    assert row["Cells_F2"] == pytest.approx(np.median(a05))
    assert row["Cells_F2__mad"] == pytest.approx(np.median(np.abs(a05 - np.median(a05))))
    assert row["Cells_F2__q90"] == pytest.approx(np.quantile(a05, 0.9))
    files = P.aggregate_files(_write(cells, tmp_path, "P1"), dispersion=["mad", "q90"])
    pd.testing.assert_frame_equal(
        files.drop(columns="Metadata_ObjectNumber", errors="ignore"),
        prof[files.columns],
        check_dtype=False,
    )
    with pytest.raises(ValueError, match="profiles.dispersion"):
        P.aggregate(one, dispersion=["spread"])


# ---------------------------------------------------------------------------- cell projection


def test_negcon_sample_units_sampling_and_blocklist(tmp_path):
    cells = _cells(np.random.default_rng(3))
    paths = _write(cells, tmp_path, "P2")
    full = C.negcon_sample(paths, "P2", max_cells=10_000)
    ctrl = cells[(cells.Metadata_Plate == "P2") & (cells.Metadata_Role == "negcon")]
    assert full.features == ("Cells_F0", "Cells_F1", "Cells_F2", "Cells_F3")  # no position
    assert full.n_controls == len(ctrl) == 120 and len(full.sample) == 120
    x = ctrl[list(full.features)].to_numpy()
    med = np.median(x, axis=0)
    np.testing.assert_allclose(full.center, med)
    np.testing.assert_allclose(full.scale, 1.4826 * np.median(np.abs(x - med), axis=0))
    np.testing.assert_allclose(np.median(full.sample, axis=0), 0, atol=1e-6)
    # seeded and plate-specific
    a = C.negcon_sample(paths, "P2", max_cells=50)
    b = C.negcon_sample(paths, "P2", max_cells=50)
    c = C.negcon_sample(paths, "other", max_cells=50)
    assert len(a.sample) == 50
    np.testing.assert_array_equal(a.sample, b.sample)
    assert not np.array_equal(a.sample, c.sample)
    a.save(tmp_path / "s.npz")
    back = C.NegconSample.load(tmp_path / "s.npz")
    assert back.features == a.features and back.plate == "P2"
    np.testing.assert_array_equal(back.sample, a.sample)
    with pytest.raises(ValueError, match="profiles.control_role"):
        C.negcon_sample(paths, "P2", control_role="DMSO")


def test_whitened_pca_decorrelates_controls_and_is_deterministic(tmp_path):
    cells = _cells(np.random.default_rng(4))
    samples = [C.negcon_sample(_write(cells, tmp_path, p), p) for p in ("P1", "P2")]
    model = C.fit_cell_projection(samples, "pca", n_components=10)
    assert model.components.shape == (4, 4) and model.names[0] == "Cells_Projection_PCA_001"
    z = model.transform(np.concatenate([s.sample for s in samples]))
    np.testing.assert_allclose(np.cov(z.T), np.eye(4), atol=1e-8)
    again = C.fit_cell_projection(samples, "pca", n_components=10)
    np.testing.assert_array_equal(model.components, again.components)
    model.save(tmp_path / "m.npz")
    back = C.CellProjection.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.components, model.components)
    assert back.method == "pca" and back.features == model.features


def test_factor_analysis_projection_is_deterministic(tmp_path):
    cells = _cells(np.random.default_rng(5))
    samples = [C.negcon_sample(_write(cells, tmp_path, p), p) for p in ("P1", "P2")]
    a = C.fit_cell_projection(samples, "fa", n_components=2, seed=3)
    b = C.fit_cell_projection(samples, "fa", n_components=2, seed=3)
    assert a.components.shape == (2, 4) and a.names[1] == "Cells_Projection_FA_002"
    np.testing.assert_array_equal(a.components, b.components)
    with pytest.raises(ValueError, match="'pca' or 'fa'"):
        C.fit_cell_projection(samples, "ica")


def test_projected_profiles_remove_plate_effect_and_show_the_treatment(tmp_path):
    cells = _cells(np.random.default_rng(6))
    paths = {p: _write(cells, tmp_path, p) for p in ("P1", "P2")}
    units = {p: C.negcon_sample(paths[p], p) for p in paths}
    model = C.fit_cell_projection(list(units.values()), "pca", n_components=4)
    profs = {
        p: P.plate_profiles(paths[p], normalization="none", projection=(units[p], model))
        for p in paths
    }
    names = model.names
    assert P.feature_columns(profs["P1"]) == ["Image_Count_Cells", *names]
    for p, prof in profs.items():
        x = prof[names].to_numpy()
        ctrl = prof.Metadata_Role.eq("negcon").to_numpy()
        # controls near 0 on every plate despite the plate offset of 3 in F0 and F1
        assert np.abs(x[ctrl]).max() < 0.5, p
        # the treatment's shift in F2 is the largest whitened effect: 1.5 / (1.4826 MAD ~ 0.3)
        assert np.linalg.norm(x[~ctrl], axis=1).min() > 3.0, p
    # a plate whose cells lack a feature of the projection is refused
    bad = cells[cells.Metadata_Plate == "P1"].drop(columns="Cells_F3")
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="cell_projection"):
        P.plate_profiles([tmp_path / "bad.parquet"], projection=(units["P1"], model))


def test_negcon_sample_on_every_cell_or_without_roles(tmp_path):
    """control_role "all" takes every cell of the plate (no Metadata_Role needed); a named role
    needs the column, and the error names the file and the config key."""
    cells = _cells(np.random.default_rng(7))
    plate = cells[cells.Metadata_Plate == "P1"].drop(columns="Metadata_Role")
    path = tmp_path / "noroles.parquet"
    plate.to_parquet(path)
    every = C.negcon_sample([path], "P1", control_role="all", max_cells=10_000)
    assert every.n_controls == len(plate) == 360
    np.testing.assert_allclose(every.center, np.median(plate[list(every.features)], axis=0))
    with pytest.raises(ValueError, match="noroles.parquet.*profiles.control_role"):
        C.negcon_sample([path], "P1")
    # a QC column the table lacks: named with the file and the config key, before any read
    with pytest.raises(ValueError, match="noroles.parquet.*'Metadata_QC'.*profiles.qc_columns"):
        C.negcon_sample([path], "P1", control_role="all", qc_columns=["Metadata_QC"])
