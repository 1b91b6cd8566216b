"""Plate-position correction: known offsets recovered, controls-only fit, order invariance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hcsflow import profiling as P
from hcsflow.profiling.position import correct_position, position_grid

ROWS = "ABCDEFGH"


def plate_table(plate: str, seed: int, n_feat: int = 3, active: float = 0.2) -> tuple:
    """A 96-well plate: additive row/column offsets, a few strongly active wells, no noise."""
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in ROWS for c in range(1, 13)]
    row_off = rng.normal(0, 1, (8, n_feat))
    col_off = rng.normal(0, 1, (12, n_feat))
    effect = np.zeros((96, n_feat))
    hit = rng.random(96) < active
    effect[hit] = rng.normal(0, 5, (hit.sum(), n_feat))
    ri = np.repeat(np.arange(8), 12)
    ci = np.tile(np.arange(12), 8)
    x = 3.0 + row_off[ri] + col_off[ci] + effect
    role = np.where(hit, "trt", "negcon")
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(n_feat)])
    df.insert(0, "Metadata_Role", role)
    df.insert(0, "Metadata_Well", wells)
    df.insert(0, "Metadata_Plate", plate)
    return df, effect


def test_median_polish_removes_additive_offsets_and_keeps_treatment_effects():
    df, effect = plate_table("P1", seed=1, active=0.15)
    out, info = correct_position(df, ["f0", "f1", "f2"], fit_on="all")
    x = out[["f0", "f1", "f2"]].to_numpy()
    inactive = ~effect.any(axis=1)
    # inactive wells all end on one value per feature (the overall level)
    assert np.ptp(x[inactive], axis=0).max() < 1e-6
    # active wells keep their effect relative to that level
    level = x[inactive][0]
    np.testing.assert_allclose(x[~inactive] - level, effect[~inactive], atol=1e-6)
    assert info["fit_on"] == "all" and info["plates"]["P1"]["row_rms"] > 0.3
    # metadata and column order untouched
    assert list(out.columns) == list(df.columns)
    assert (out["Metadata_Well"] == df["Metadata_Well"]).all()


def test_uncorrected_offsets_are_what_the_correction_removes():
    df, effect = plate_table("P1", seed=2)
    raw = df[["f0", "f1", "f2"]].to_numpy()
    inactive = ~effect.any(axis=1)
    assert np.ptp(raw[inactive], axis=0).min() > 1.0  # the test has something to remove


def test_negcon_fit_recovers_offsets_from_controls_only():
    df, effect = plate_table("P1", seed=3, active=0.6)  # most wells active: median polish fails
    feats = ["f0", "f1", "f2"]
    inactive = ~effect.any(axis=1)
    out, _ = correct_position(
        df, feats, fit_on="negcon", control={"Metadata_Role": "negcon"}, shrinkage=0.0
    )
    x = out[feats].to_numpy()
    assert np.ptp(x[inactive], axis=0).max() < 1e-3
    # treated wells whose row and column hold controls get their effect back
    ri, ci = np.repeat(np.arange(8), 12), np.tile(np.arange(12), 8)
    seen = np.isin(ri, ri[inactive]) & np.isin(ci, ci[inactive]) & ~inactive
    assert seen.sum() > 20
    np.testing.assert_allclose(x[seen] - x[inactive][0], effect[seen], atol=1e-3)
    # the all-well fit is biased by the active majority on the same plate
    biased = correct_position(df, feats, fit_on="all")[0][feats].to_numpy()
    assert np.ptp(biased[inactive], axis=0).max() > 0.1


def test_plates_are_fitted_separately_and_row_order_does_not_matter():
    a, _ = plate_table("P1", seed=4)
    b, _ = plate_table("P2", seed=5)
    both = pd.concat([a, b], ignore_index=True)
    feats = ["f0", "f1", "f2"]
    out = correct_position(both, feats)[0]
    alone = correct_position(a, feats)[0]
    np.testing.assert_allclose(out[feats].to_numpy()[:96], alone[feats].to_numpy())
    perm = np.random.default_rng(0).permutation(len(both))
    shuffled = correct_position(both.iloc[perm].reset_index(drop=True), feats)[0]
    back = shuffled.set_index(["Metadata_Plate", "Metadata_Well"]).loc[
        list(zip(both["Metadata_Plate"], both["Metadata_Well"], strict=True))
    ]
    np.testing.assert_allclose(back[feats].to_numpy(), out[feats].to_numpy())


def test_missing_wells_and_nan_values_are_tolerated():
    df, effect = plate_table("P1", seed=6, active=0.1)
    df = df.drop(index=[0, 5, 40]).reset_index(drop=True)
    df.loc[3, "f1"] = np.nan
    out = correct_position(df, ["f0", "f1", "f2"])[0]
    assert np.isnan(out.loc[3, "f1"]) and np.isfinite(out.drop(index=3)[["f0", "f1"]]).all().all()


def test_bad_input_is_named():
    df, _ = plate_table("P1", seed=7)
    df.loc[4, "Metadata_Well"] = "well-5"
    with pytest.raises(ValueError, match="well-5"):
        correct_position(df, ["f0"])
    with pytest.raises(ValueError, match="fit_on"):
        correct_position(df, ["f0"], fit_on="rows")
    with pytest.raises(ValueError, match="control"):
        correct_position(df, ["f0"], fit_on="negcon")


def test_position_grid_accepts_both_well_spellings():
    g = position_grid(["A1", "A02", "B01", "P24"])
    assert (g.rows == [0, 0, 1, 2]).all() and (g.cols == [0, 1, 0, 2]).all()
    assert (g.n_rows, g.n_cols) == (3, 3)


def test_campaign_step_runs_first_and_is_recorded():
    a, _ = plate_table("P1", seed=8, n_feat=6)
    a["Metadata_Compound"] = np.where(a["Metadata_Role"] == "negcon", "DMSO", a["Metadata_Well"])
    a["Metadata_Dose"] = 1.0
    camp = {
        "position": {"enabled": True, "fit_on": "all", "shrinkage": 1.0},
        "feature_select": {
            "operations": [],
            "corr_threshold": 0.9,
            "na_cutoff": 0.05,
            "min_variance": 1e-6,
            "freq_cut": 0.05,
            "unique_cut": 0.01,
            "blocklist": [],
            "outlier_cutoff": 500,
        },
        "sphering": {"enabled": False, "method": "ZCA", "epsilon": 1e-6, "shrinkage": 0.0},
        "harmony": {"enabled": False},
        "consensus": "median",
    }
    prof, _, info = P.campaign_profiles(a, camp)
    assert info["steps"][0] == "position(fit_on=all)"
    assert "P1" in info["position"]["plates"]
    ref = correct_position(a, P.feature_columns(a))[0]
    got = prof.set_index("Metadata_Well").loc[ref["Metadata_Well"], "f0"].to_numpy()
    np.testing.assert_allclose(got, ref["f0"].to_numpy())
