"""Tests of hcsflow.profiling: aggregation, normalization, feature selection, sphering,
Harmony, consensus and reading external profile tables."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hcsflow import profiling as P
from hcsflow.io import write_table
from hcsflow.profiling.feature_select import _corr_matrix

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LINCS = DATA / "lincs_profiles" / "SQ00015054_normalized_feature_select.csv.gz"


def _cells(seed: int = 0, n_wells: int = 6, per_well: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for plate in ("P1", "P2"):
        for w in range(n_wells):
            for c in range(per_well + w):
                rows.append((plate, f"A{w + 1:02d}", "negcon" if w < 2 else "trt", c % 3 + 1))
    meta = pd.DataFrame(
        rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Role", "Metadata_Site"]
    )
    x = rng.normal(size=(len(meta), 4))
    feats = pd.DataFrame(x, columns=["Cells_A", "Cells_B", "Nuclei_C", "Cytoplasm_D"])
    return pd.concat([meta, feats], axis=1)


# ------------------------------------------------------------------------------- aggregate


@pytest.mark.parametrize("method", ["median", "mean"])
def test_aggregate_matches_hand_computation(method):
    cells = _cells()
    cells.loc[3, "Cells_A"] = np.nan  # NaN is skipped
    before = cells.copy()
    prof = P.aggregate(cells, method=method)
    pd.testing.assert_frame_equal(cells, before)  # input untouched
    assert len(prof) == 12
    assert list(prof.columns[:4]) == [
        "Metadata_Plate",
        "Metadata_Well",
        "Metadata_Role",
        "Image_Count_Cells",
    ]
    # Metadata_Site varies within a well: dropped; Metadata_Role is constant: kept
    assert "Metadata_Site" not in prof.columns
    for (plate, well), grp in cells.groupby(["Metadata_Plate", "Metadata_Well"]):
        row = prof[(prof.Metadata_Plate == plate) & (prof.Metadata_Well == well)].iloc[0]
        assert row["Image_Count_Cells"] == len(grp)
        for f in ["Cells_A", "Cells_B", "Nuclei_C", "Cytoplasm_D"]:
            vals = grp[f].dropna().to_numpy()
            expected = np.median(vals) if method == "median" else vals.mean()
            assert row[f] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_aggregate_median_small_case_by_hand():
    cells = pd.DataFrame(
        {
            "Metadata_Plate": ["p"] * 5,
            "Metadata_Well": ["B02", "B02", "B02", "A01", "A01"],
            "Cells_X": [1.0, 5.0, 2.0, 10.0, 20.0],
            "Metadata_QC": [False, False, True, False, False],
        }
    )
    prof = P.aggregate(cells)
    assert prof.Metadata_Well.tolist() == ["A01", "B02"]  # sorted by strata
    assert prof.Cells_X.tolist() == [15.0, 2.0]
    assert prof.Image_Count_Cells.tolist() == [2, 3]
    qc = P.aggregate(cells, qc_columns=["Metadata_QC"])
    assert qc.Cells_X.tolist() == [15.0, 3.0]  # cell with 2.0 excluded
    assert qc.Image_Count_Cells.tolist() == [2, 2]
    with pytest.raises(ValueError, match="Metadata_Flag"):
        P.aggregate(cells, qc_columns=["Metadata_Flag"])
    with pytest.raises(ValueError, match="Metadata_Well"):
        P.aggregate(cells.drop(columns="Metadata_Well"))


def test_aggregate_keeps_well_metadata_and_drops_per_field_and_per_cell_metadata():
    # one site per well and no flagged cell: site and flags are constant within each well,
    # but they describe fields and cells, not wells
    cells = pd.DataFrame(
        {
            "Metadata_Plate": ["p"] * 4,
            "Metadata_Well": ["A01", "A01", "B02", "B02"],
            "Metadata_Site": [1, 1, 1, 1],
            "Metadata_ObjectNumber": [1, 1, 2, 2],
            "Metadata_Cells_NoNucleus": [False] * 4,
            "Metadata_Compound": ["DMSO", "DMSO", "X", "X"],
            "Cells_X": [1.0, 3.0, 5.0, 7.0],
        }
    )
    prof = P.aggregate(cells)
    assert "Metadata_Compound" in prof.columns
    for c in ("Metadata_Site", "Metadata_ObjectNumber", "Metadata_Cells_NoNucleus"):
        assert c not in prof.columns
    # a per-field column asked for as a stratum stays
    assert "Metadata_Site" in P.aggregate(cells, strata=["Metadata_Well", "Metadata_Site"])


def test_aggregate_files_streams_shards_and_rejects_split_wells(tmp_path):
    cells = _cells()
    a = cells[cells.Metadata_Well.isin(["A01", "A02", "A03"])]
    b = cells[~cells.Metadata_Well.isin(["A01", "A02", "A03"])]
    a.to_parquet(tmp_path / "s1.parquet")
    b.to_parquet(tmp_path / "s2.parquet")
    streamed = P.aggregate_files([tmp_path / "s1.parquet", tmp_path / "s2.parquet"])
    whole = P.aggregate(cells)
    pd.testing.assert_frame_equal(streamed, whole)
    cells.iloc[:3].to_parquet(tmp_path / "s3.parquet")
    with pytest.raises(ValueError, match="within one shard"):
        P.aggregate_files([tmp_path / "s1.parquet", tmp_path / "s3.parquet"])


# ------------------------------------------------------------------------------- normalize


def test_mad_robustize_centres_and_scales_negcon_per_plate():
    prof = P.aggregate(_cells(n_wells=12, per_well=5), method="mean")
    prof.loc[prof.Metadata_Plate == "P2", "Cells_A"] += 100.0  # plate effect
    ctrl = {"Metadata_Role": "negcon"}
    # more negcon wells so MAD is meaningful
    prof.loc[prof.Metadata_Well.isin(["A03", "A04", "A05"]), "Metadata_Role"] = "negcon"
    out = P.normalize(prof, method="mad_robustize", control=ctrl)
    feats = P.feature_columns(prof)
    for _, grp in out[out.Metadata_Role == "negcon"].groupby("Metadata_Plate"):
        x = grp[feats].to_numpy()
        med = np.median(x, axis=0)
        mad = np.median(np.abs(x - med), axis=0) * 1.4826
        np.testing.assert_allclose(med, 0.0, atol=1e-12)
        np.testing.assert_allclose(mad, 1.0, rtol=1e-9)
    # the transform is the documented formula, applied to all wells of the plate
    p1 = prof[prof.Metadata_Plate == "P1"]
    neg = p1[p1.Metadata_Role == "negcon"]["Cells_B"]
    med = neg.median()
    mad = (neg - med).abs().median() / (1 / 1.4826)
    expected = (p1["Cells_B"] - med) / (mad + 1e-18)
    np.testing.assert_allclose(out.loc[p1.index, "Cells_B"], expected, rtol=1e-12)
    # plate effect removed
    assert abs(out.groupby("Metadata_Plate").Cells_A.median().diff().iloc[-1]) < 1.0
    assert out.columns.tolist() == prof.columns.tolist()


def test_standardize_and_none():
    prof = P.aggregate(_cells(n_wells=10, per_well=4), method="mean")
    prof["Cells_const"] = 3.0
    out = P.normalize(prof, method="standardize", control=None)
    feats = ["Cells_A", "Cells_B", "Nuclei_C"]
    for _, grp in out.groupby("Metadata_Plate"):
        np.testing.assert_allclose(grp[feats].mean(), 0.0, atol=1e-12)
        np.testing.assert_allclose(grp[feats].std(ddof=0), 1.0, rtol=1e-12)
    assert (out.Cells_const == 0.0).all()  # constant: centred, not divided by zero
    pd.testing.assert_frame_equal(P.normalize(prof, method="none"), prof)
    # rows in any order give the same numbers
    shuffled = prof.sample(frac=1.0, random_state=0)
    for method in ("mad_robustize", "standardize"):
        a = P.normalize(prof, method=method, control={"Metadata_Role": "negcon"})
        b = P.normalize(shuffled, method=method, control={"Metadata_Role": "negcon"})
        pd.testing.assert_frame_equal(a, b.loc[a.index])
    with pytest.raises(ValueError, match="no control rows"):
        P.normalize(prof, control={"Metadata_Role": "poscon"})
    with pytest.raises(ValueError, match="Metadata_Kind"):
        P.normalize(prof, control={"Metadata_Kind": "negcon"})
    with pytest.raises(ValueError, match="normalization method"):
        P.normalize(prof, method="zscore")


# ------------------------------------------------------------------------ feature selection


def _reference_correlation_excluded(df: pd.DataFrame, threshold: float) -> set[str]:
    """pycytominer's correlation_threshold, written out pair by pair."""
    cor = df.corr(method="pearson")
    order = list(cor.abs().sum().sort_values(kind="stable").index)
    excluded = set()
    cols = list(df.columns)
    for i, a in enumerate(cols):
        for b in cols[:i]:
            if cor.loc[a, b] > threshold:
                excluded.add(a if order.index(a) > order.index(b) else b)
    return excluded


@pytest.mark.parametrize("with_nan", [False, True])
def test_correlation_filter_matches_pairwise_rule(with_nan):
    rng = np.random.default_rng(3)
    n, p = 200, 30
    lat = rng.normal(size=(n, 4))
    x = lat @ rng.normal(size=(4, p)) + 0.3 * rng.normal(size=(n, p))
    if with_nan:
        x[rng.random((n, p)) < 0.03] = np.nan
    df = pd.DataFrame(x, columns=[f"Cells_F{i:02d}" for i in range(p)])
    ex = P.feature_select_excluded(df, operations=["correlation"], corr_threshold=0.8)
    assert set(ex["correlation"]) == _reference_correlation_excluded(df, 0.8)
    assert 0 < len(ex["correlation"]) < p


def test_feature_select_small_case_by_hand():
    rng = np.random.default_rng(0)
    n = 100
    a = rng.normal(size=n)
    df = pd.DataFrame(
        {
            "Metadata_Well": [f"A{i:02d}" for i in range(n)],
            "Cells_a": a,
            # b ~ a (corr > 0.99) and also correlated with c: b has the larger sum of |corr|
            "Cells_b": a + 0.05 * rng.normal(size=n),
            "Cells_c": rng.normal(size=n),
            "Cells_neg": -a,  # negatively correlated: pycytominer keeps it
            "Cells_const": np.r_[np.ones(n - 1), 1.0 + 1e-5],  # variance ~1e-12
            "Cells_na": np.where(np.arange(n) < 6, np.nan, rng.normal(size=n)),  # 6 % NaN
            "Cells_few": np.r_[np.zeros(n - 2), [1.0, 2.0]],  # 2nd/1st frequency 1/98
            "Nuclei_Correlation_RWC_DNA_ER": rng.normal(size=n),
            "Cells_outlier": np.r_[rng.normal(size=n - 1), -600.0],
        }
    )
    df["Cells_b"] = df["Cells_b"] + 0.3 * df["Cells_c"] * 0  # keep b's definition explicit
    ops = ["blocklist", "na", "variance", "frequency", "outlier", "correlation"]
    ex = P.feature_select_excluded(df, operations=ops)
    assert ex["outlier"] == ["Cells_outlier"]
    assert ex["blocklist"] == ["Nuclei_Correlation_RWC_DNA_ER"]
    assert ex["na"] == ["Cells_na"]
    assert ex["variance"] == ["Cells_const"]
    assert ex["frequency"] == ["Cells_few"]
    assert len(ex["correlation"]) == 1 and ex["correlation"][0] in ("Cells_a", "Cells_b")
    out = P.feature_select(df, operations=ops)
    assert "Cells_neg" in out.columns and "Metadata_Well" in out.columns
    assert out.shape[1] == df.shape[1] - 6
    # a NaN fraction at the cutoff is kept (strictly greater drops)
    kept = P.feature_select_excluded(df, operations=["na"], na_cutoff=0.06)
    assert kept["na"] == []
    with pytest.raises(ValueError, match="unknown feature-selection operation"):
        P.feature_select(df, operations=["pca"])
    # one params object, or its fields as keywords (overriding the object's)
    params = P.FeatureSelectParams(operations=ops, na_cutoff=0.06)
    assert P.feature_select_excluded(df, params) == P.feature_select_excluded(
        df, operations=ops, na_cutoff=0.06
    )
    assert P.feature_select_excluded(df, params, na_cutoff=0.05) == ex
    assert params.operations == tuple(ops)  # hashable, frozen
    with pytest.raises(ValueError, match="corr_threshold"):
        P.FeatureSelectParams(corr_threshold=1.5)


def test_feature_select_params_from_the_config_schema():
    from hcsflow.config import config_section

    fs = config_section("campaign")["feature_select"]
    params = P.FeatureSelectParams.from_config(fs)
    assert list(params.operations) == fs["operations"]
    assert list(params.blocklist) == fs["blocklist"]
    assert params.corr_threshold == fs["corr_threshold"]


def test_feature_select_order_semantics():
    # correlation ranking depends on which features the earlier operations removed
    rng = np.random.default_rng(5)
    n = 300
    a = rng.normal(size=n)
    df = pd.DataFrame(
        {
            "Cells_a": a,
            "Cells_b": a + 0.2 * rng.normal(size=n),
            "Cells_block": a + 0.2 * rng.normal(size=n),
        }
    )
    first = P.feature_select_excluded(
        df, operations=["blocklist", "correlation"], blocklist=["Cells_block"]
    )
    assert first["blocklist"] == ["Cells_block"]
    assert len(first["correlation"]) == 1
    everything = set(sum(first.values(), []))
    assert len(everything) == 2


# ------------------------------------------------------------------------- sphere / harmony


def test_sphere_whitens_negcon():
    rng = np.random.default_rng(2)
    n, p = 400, 6
    mix = rng.normal(size=(p, p))
    x = rng.normal(size=(n, p)) @ mix + 5.0
    df = pd.DataFrame(x, columns=[f"Cells_F{i}" for i in range(p)])
    df.insert(0, "Metadata_Role", np.where(np.arange(n) < 300, "negcon", "trt"))
    for method in ("ZCA", "ZCA-cor"):
        out = P.sphere(df, control={"Metadata_Role": "negcon"}, method=method, epsilon=0.0)
        neg = out[out.Metadata_Role == "negcon"].iloc[:, 1:].to_numpy()
        np.testing.assert_allclose(np.cov(neg, rowvar=False), np.eye(p), atol=1e-8)
        np.testing.assert_allclose(neg.mean(axis=0), 0.0, atol=1e-10)
    # ZCA is the whitening closest to the input: it is symmetric, so a feature stays mostly
    # itself (large positive diagonal correlation with the original)
    out = P.sphere(df, control={"Metadata_Role": "negcon"})
    for i in range(p):
        assert np.corrcoef(out.iloc[:, i + 1], df.iloc[:, i + 1])[0, 1] > 0.3
    df.iloc[0, 2] = np.nan
    with pytest.raises(ValueError, match="Cells_F1"):
        P.sphere(df)


def test_sphere_shrinkage_bounds_amplification_of_directions_controls_barely_sample():
    # 55 control wells, 60 features (true covariance: the identity): the control covariance
    # has rank 54 and its smallest eigenvalues are far below 1; plain ZCA amplifies those
    # directions (gain ratio ~35 here), shrinkage bounds the ratio of the largest to the
    # smallest gain
    rng = np.random.default_rng(3)
    n_ctrl, p = 55, 60
    x = rng.normal(size=(n_ctrl, p))
    mean = x.mean(axis=0)
    # the transform is affine, y = (x - mean) W: rows mean + e_i give the rows of W
    probe = np.vstack([x, mean + np.eye(p)])
    df = pd.DataFrame(probe, columns=[f"Cells_F{i}" for i in range(p)])
    df.insert(0, "Metadata_Role", np.where(np.arange(len(probe)) < n_ctrl, "negcon", "trt"))
    ctrl = {"Metadata_Role": "negcon"}

    def gains(shrinkage: float) -> np.ndarray:
        out = P.sphere(df, control=ctrl, shrinkage=shrinkage)
        w = out.iloc[n_ctrl:, 1:].to_numpy()
        return np.linalg.svd(w, compute_uv=False)

    cov = np.cov(x, rowvar=False)
    lmax, mu = np.linalg.eigvalsh(cov)[-1], np.trace(cov) / p
    g0 = gains(0.0)
    assert g0.max() / g0.min() > 20.0
    for s in (0.1, 0.3, 0.6):
        g = gains(s)
        bound = np.sqrt(((1 - s) * lmax + s * mu) / (s * mu))
        assert g.max() / g.min() == pytest.approx(bound, rel=1e-4)  # epsilon 1e-6 aside
        assert g.max() / g.min() < g0.max() / g0.min()
    g1 = gains(1.0)  # shrinkage 1: centring and one common scale, no whitening
    np.testing.assert_allclose(g1, g1[0], rtol=1e-9)
    with pytest.raises(ValueError, match="shrinkage"):
        P.sphere(df, control=ctrl, shrinkage=1.5)


def _batched(seed: int = 1):
    rng = np.random.default_rng(seed)
    n_t, p, reps = 6, 30, 10
    centers = rng.normal(size=(n_t, p)) * 2
    rows, x = [], []
    for b in range(3):
        shift = rng.normal(size=p) * 1.5
        for t in range(n_t):
            for _ in range(reps):
                x.append(centers[t] + shift + rng.normal(size=p) * 0.5)
                rows.append((f"b{b}", f"c{t}"))
    meta = pd.DataFrame(rows, columns=["Metadata_Batch", "Metadata_Compound"])
    return pd.concat(
        [meta, pd.DataFrame(np.array(x), columns=[f"Cells_F{i}" for i in range(p)])], axis=1
    )


def test_harmony_removes_batch_shift_and_keeps_treatments():
    from sklearn.metrics import silhouette_score

    df = _batched()
    out = P.harmony(df, n_components=10, seed=0)
    feats = P.feature_columns(out)
    assert len(feats) == 10 and feats[0] == "Harmony_PC0001"
    before_x = df[P.feature_columns(df)].to_numpy()
    after_x = out[feats].to_numpy()
    assert silhouette_score(before_x, df.Metadata_Batch) > 0.2
    assert silhouette_score(after_x, out.Metadata_Batch) < 0.05
    assert silhouette_score(after_x, out.Metadata_Compound) > silhouette_score(
        before_x, df.Metadata_Compound
    )
    # 1-NN of each row is a replicate of the same compound (treatment differences preserved)
    d = ((after_x[:, None, :] - after_x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(axis=1)
    assert (out.Metadata_Compound.to_numpy()[nn] == out.Metadata_Compound.to_numpy()).mean() > 0.95
    again = P.harmony(df, n_components=10, seed=0)
    np.testing.assert_array_equal(again[feats].to_numpy(), after_x)
    with pytest.raises(ValueError, match="Metadata_Run"):
        P.harmony(df, batch_col="Metadata_Run")


# ----------------------------------------------------------------------------- consensus


def test_consensus_median_of_replicates():
    df = pd.DataFrame(
        {
            "Metadata_Plate": ["p1", "p1", "p2", "p2", "p1"],
            "Metadata_Well": ["A01", "A02", "B01", "B02", "A03"],
            "Metadata_Compound": ["x", "y", "x", "y", "x"],
            "Metadata_Dose": [1.0, 1.0, 1.0, 1.0, 10.0],
            "Metadata_MoA": ["m1", "m2", "m1", "m2", "m1"],
            "Cells_F": [1.0, 2.0, 3.0, 8.0, 5.0],
        }
    )
    out = P.consensus(df)
    assert out[["Metadata_Compound", "Metadata_Dose"]].values.tolist() == [
        ["x", 1.0],
        ["x", 10.0],
        ["y", 1.0],
    ]
    assert out.Cells_F.tolist() == [2.0, 5.0, 5.0]
    assert out.Metadata_Replicates.tolist() == [2, 1, 2]
    assert out.Metadata_MoA.tolist() == ["m1", "m1", "m2"]
    assert "Metadata_Well" not in out.columns  # varies within a treatment
    with pytest.raises(ValueError, match="Metadata_Compound"):
        P.consensus(df.drop(columns="Metadata_Compound"))


# --------------------------------------------------------------------------- external tables


@pytest.mark.skipif(not LINCS.exists(), reason="shared LINCS plate not available")
def test_read_profiles_table_lincs():
    df = P.read_profiles_table(LINCS)
    assert len(df) == 384
    assert df.Metadata_Plate.unique().tolist() == ["SQ00015054"]
    assert set(df.Metadata_Role) == {"negcon", "trt"}
    assert (df.Metadata_Compound[df.Metadata_Role == "negcon"] == "DMSO").all()
    assert df.Metadata_Dose.dtype == np.float64
    assert df.Metadata_MoA.notna().sum() > 300
    assert df.Metadata_Batch.unique().tolist() == ["4"]
    feats = P.feature_columns(df)
    assert len(feats) == 454
    # already feature-selected by pycytominer (whose blocklist lacks positional features):
    # only location features are blocklisted and hardly any pair above 0.9 remains
    ex = P.feature_select_excluded(df, operations=["blocklist", "correlation"])
    assert ex["blocklist"] and all("_Location_" in f for f in ex["blocklist"])
    assert len(ex["correlation"]) < 5
    cons = P.consensus(df)
    n_treat = df.groupby(["Metadata_Compound", "Metadata_Dose"]).ngroups
    assert len(cons) == n_treat
    assert cons.loc[cons.Metadata_Compound == "DMSO", "Metadata_Replicates"].iloc[0] == 24


def test_read_profiles_table_errors_name_the_column(tmp_path):
    df = pd.DataFrame(
        {
            "Metadata_Plate": ["p", "p"],
            "Metadata_Well": ["A01", "A02"],
            "Metadata_pert": ["DMSO", "cpd"],
            "Metadata_conc": [0, 1.5],
            "Metadata_pert_type": ["control", "trt"],
            "Cells_F": [0.1, 0.2],
        }
    )
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="Metadata_Compound"):
        P.read_profiles_table(path)
    cols = {"Metadata_Compound": "Metadata_pert", "Metadata_Dose": "Metadata_conc"}
    out = P.read_profiles_table(path, columns=cols)
    assert out.Metadata_Compound.tolist() == ["DMSO", "cpd"]
    assert out.Metadata_Role.tolist() == ["negcon", "trt"]
    with pytest.raises(ValueError, match="Metadata_missing"):
        P.read_profiles_table(path, columns={**cols, "Metadata_MoA": "Metadata_missing"})
    df.loc[1, "Metadata_pert_type"] = "weird"
    df.to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="weird"):
        P.read_profiles_table(tmp_path / "p.parquet", columns=cols)


# ------------------------------------------------------------------------------ determinism


def test_chain_is_deterministic_bytes(tmp_path):
    def run(path):
        cells = _cells(seed=7, n_wells=8, per_well=6)
        prof = P.aggregate(cells)
        prof = P.normalize(prof, control={"Metadata_Role": "negcon"})
        prof = P.feature_select(prof)
        write_table(P.consensus(prof, by=("Metadata_Role",)), path, {"step": "test"})

    run(tmp_path / "a.parquet")
    run(tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


# ------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("kind", ["normal", "ties", "sorted", "nan", "float32"])
def test_group_median_kernel_is_exact(kind):
    from hcsflow.profiling._groupstats import group_median

    rng = np.random.default_rng(11)
    n, p, groups = 3000, 5, 7
    x = rng.normal(size=(n, p))
    if kind == "ties":
        x = rng.integers(0, 4, size=(n, p)).astype(float)
    elif kind == "sorted":  # adversarial order for the sample bracket
        x = np.sort(x, axis=0)
    elif kind == "nan":
        x[rng.random(x.shape) < 0.3] = np.nan
        x[:, 2] = np.nan
    elif kind == "float32":
        x = x.astype(np.float32)
    codes = np.sort(rng.integers(0, groups, n)) if kind == "sorted" else rng.integers(0, groups, n)
    codes[codes == 3] = 2  # an empty group
    order = np.argsort(codes, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=groups))]
    for threads in (1, 2):
        got = group_median(x.T, order, bounds, threads=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column
            want = np.array(
                [
                    np.nanmedian(x[codes == g].astype(np.float64), axis=0)
                    if (codes == g).any()
                    else np.full(p, np.nan)
                    for g in range(groups)
                ]
            )
        np.testing.assert_array_equal(got, want)


def test_corr_matrix_matches_numpy_and_pandas():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 50.0
    np.testing.assert_allclose(_corr_matrix(x), np.corrcoef(x.T), atol=1e-12)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 5] = np.where(np.isnan(x[:, 5]), np.nan, 2.0)  # constant where present
    got = _corr_matrix(x, chunk=33)
    want = pd.DataFrame(x).corr().to_numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_group_median_columns_contiguous_runs(dtype):
    # groups as contiguous runs of rows (the one-pass path), sizes around the sample bracket's
    # threshold, a few NaN in some columns (fallback path), strided and read-only columns
    from hcsflow.profiling._groupstats import group_median_columns

    rng = np.random.default_rng(5)
    sizes = np.array([1, 2, 255, 256, 257, 258, 700, 1501, 0, 3])
    codes = np.repeat(np.arange(sizes.size), sizes)
    n = codes.size
    x = rng.normal(size=(n, 6)).astype(dtype)
    x[rng.random(n) < 0.01, 1] = np.nan
    x[:, 2] = np.round(x[:, 2])  # ties
    x[5:300, 3] = np.nan  # a group that is mostly NaN
    x[:, 4] = np.sort(x[:, 4])  # sorted runs: the sample bracket is exact or misses
    columns = [x[:, j] for j in range(6)]  # strided views
    for c in columns:
        c.flags.writeable = False
    order = np.argsort(codes, kind="stable")
    bounds = np.r_[0, np.cumsum(sizes)]
    for threads in (1, 3):
        got = group_median_columns(columns, order, bounds, threads=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.array(
                [
                    np.nanmedian(x[codes == g].astype(np.float64), axis=0)
                    if sizes[g]
                    else np.full(6, np.nan)
                    for g in range(sizes.size)
                ]
            ).T
        np.testing.assert_array_equal(got, want)


def test_aggregate_files_arrow_columns_nulls_chunks_and_prefetch(tmp_path):
    # nulls (NaN after reading), float32 and integer features, several row groups (chunked
    # columns): the streamed result equals the in-memory one, with or without prefetching
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    paths, frames = [], []
    for s in range(3):
        n = 900
        wells = np.repeat([f"B{3 * s + w + 1:02d}" for w in range(3)], n // 3)
        f64 = rng.normal(size=n)
        f64[rng.random(n) < 0.1] = np.nan
        cells = pd.DataFrame(
            {
                "Metadata_Plate": "P1",
                "Metadata_Well": wells,
                "Cells_A": f64,
                "Cells_B": rng.normal(size=n).astype(np.float32),
                "Cells_C": rng.integers(0, 50, n),
            }
        )
        table = pa.Table.from_pandas(cells, preserve_index=False)
        assert table.column("Cells_A").null_count > 0  # NaN stored as nulls
        path = tmp_path / f"{s}.parquet"
        pq.write_table(table, path, row_group_size=250)
        paths.append(path)
        frames.append(cells)
    whole = P.aggregate(pd.concat(frames, ignore_index=True))
    for threads in (1, 2):
        streamed = P.aggregate_files(paths, threads=threads)
        pd.testing.assert_frame_equal(streamed, whole)
    assert whole["Cells_B"].dtype == np.float64 and whole["Image_Count_Cells"].eq(300).all()
