"""Tests of hcsflow.analysis: activity and consistency mAP, NSC accuracy, UMAP, clustering."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# umap-learn compiles its numba functions on first use (~30 s); a cache shared by the test
# process and the workflow subprocesses it starts compiles them once.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hcsflow-numba"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hcsflow import analysis as A  # noqa: E402


def make_screen(
    seed: int = 0,
    n_features: int = 40,
    n_moa: int = 3,
    compounds_per_moa: int = 2,
    doses: tuple[float, ...] = (1.0, 3.0, 10.0),
    replicates: int = 3,
    n_negcon: int = 24,
    effect: float = 3.0,
    n_inactive: int = 1,
) -> pd.DataFrame:
    """Well profiles: negcon ~ N(0, 1); a compound adds dose-scaled shift along its MoA."""
    rng = np.random.default_rng(seed)
    moa_dirs = rng.normal(size=(n_moa, n_features))
    moa_dirs /= np.linalg.norm(moa_dirs, axis=1, keepdims=True)
    rows, x = [], []
    for i in range(n_negcon):
        rows.append(
            dict(
                Metadata_Compound="DMSO",
                Metadata_Dose=0.0,
                Metadata_Role="negcon",
                Metadata_MoA=None,
                Metadata_Plate=f"P{i % 2}",
            )
        )
        x.append(rng.normal(size=n_features))
    comps = [(f"C{m}{c}", f"moa{m}", m) for m in range(n_moa) for c in range(compounds_per_moa)]
    comps += [(f"INACT{i}", "none", -1) for i in range(n_inactive)]
    for name, moa, m in comps:
        own = rng.normal(size=n_features) * 0.3 / np.sqrt(n_features)  # compound-specific
        for d in doses:
            scale = effect * np.log10(d * 10) / 2
            for r in range(replicates):
                rows.append(
                    dict(
                        Metadata_Compound=name,
                        Metadata_Dose=d,
                        Metadata_Role="trt",
                        Metadata_MoA=moa,
                        Metadata_Plate=f"P{r % 2}",
                    )
                )
                shift = 0.0 if m < 0 else scale * (moa_dirs[m] + own) * np.sqrt(n_features)
                x.append(rng.normal(size=n_features) + shift)
    meta = pd.DataFrame(rows)
    meta["Metadata_Well"] = [f"{chr(65 + i // 24)}{i % 24 + 1:02d}" for i in range(len(meta))]
    feats = pd.DataFrame(np.array(x), columns=[f"Cells_F_{j:03d}" for j in range(n_features)])
    return pd.concat([meta, feats], axis=1)


def consensus_of(profiles: pd.DataFrame) -> pd.DataFrame:
    feats = A.feature_columns(profiles)
    keys = ["Metadata_Compound", "Metadata_Dose"]
    med = profiles.groupby(keys, sort=True)[feats].median()
    meta = profiles.groupby(keys, sort=True)[["Metadata_Role", "Metadata_MoA"]].first()
    return meta.join(med).reset_index()


@pytest.fixture(scope="module")
def screen() -> pd.DataFrame:
    return make_screen()


def test_activity_real_shift_vs_negcon_drawn(screen):
    df = screen.copy()
    # a fake compound made of negcon wells: must look like chance
    neg_idx = df.index[df["Metadata_Role"] == "negcon"][:4]
    df.loc[neg_idx, ["Metadata_Compound", "Metadata_Role"]] = ["FAKE", "trt"]
    df.loc[neg_idx, "Metadata_Dose"] = 1.0
    before = df.copy()
    act = A.phenotypic_activity(df, null_size=2000, seed=1)
    pd.testing.assert_frame_equal(df, before)  # input untouched
    hi = act[(act.Metadata_Compound == "C00") & (act.Metadata_Dose == 10.0)].iloc[0]
    assert hi.mean_average_precision > 0.9
    assert hi.q_value < 0.05 and hi.active
    fake = act[act.Metadata_Compound == "FAKE"].iloc[0]
    assert fake.n_replicates == 4
    assert fake.mean_average_precision < 0.6
    assert fake.q_value > 0.05 and not fake.active
    inact = act[act.Metadata_Compound == "INACT0"]
    assert not inact.active.any()
    # every real compound at top dose is active; negcon never appears as a treatment
    assert act[(act.Metadata_Dose == 10.0) & act.Metadata_Compound.str.startswith("C")].active.all()
    assert "DMSO" not in set(act.Metadata_Compound)
    assert (act.q_value >= act.p_value - 1e-12).all()
    # negcon distance ~1 for negcon-like, large for shifted
    assert fake.negcon_distance < 1.5 < hi.negcon_distance


def test_activity_deterministic_and_single_replicate(screen):
    a = A.phenotypic_activity(screen, null_size=1000, seed=3)
    b = A.phenotypic_activity(screen, null_size=1000, seed=3)
    pd.testing.assert_frame_equal(a, b)
    one = screen.drop(screen.index[(screen.Metadata_Compound == "C10")][1:])
    act = A.phenotypic_activity(one, null_size=1000)
    row = act[act.Metadata_Compound == "C10"].iloc[0]
    assert row.n_replicates == 1 and np.isnan(row.mean_average_precision) and not row.active


def test_activity_errors(screen):
    with pytest.raises(ValueError, match="negative-control"):
        A.phenotypic_activity(screen.assign(Metadata_Role="trt"))
    bad = screen.copy()
    bad.loc[3, "Cells_F_001"] = np.nan
    with pytest.raises(ValueError, match="Cells_F_001"):
        A.phenotypic_activity(bad)
    with pytest.raises(ValueError, match="distance"):
        A.phenotypic_activity(screen, distance="hamming")


def test_hierarchical_fdr(screen):
    act = A.phenotypic_activity(screen, null_size=1000, fdr="hierarchical")
    assert act[(act.Metadata_Dose == 10.0) & act.Metadata_Compound.str.startswith("C")].active.all()
    assert not act[act.Metadata_Compound == "INACT0"].active.any()


def test_moa_consistency(screen):
    cons = consensus_of(screen)
    cons = cons[cons.Metadata_Compound != "INACT0"]
    res = A.moa_consistency(cons, null_size=2000)
    assert list(res.Metadata_MoA) == ["moa0", "moa1", "moa2"]
    assert (res.n_compounds == 2).all() and (res.n_profiles == 6).all()
    assert (res.mean_average_precision > 0.8).all() and res.consistent.all()
    # shuffled MoA labels across compounds: consistency collapses
    shuf = cons.copy()
    lab = {"C00": "moa0", "C01": "moa1", "C10": "moa2", "C11": "moa0", "C20": "moa1", "C21": "moa2"}
    shuf["Metadata_MoA"] = shuf.Metadata_Compound.map(lab)
    res2 = A.moa_consistency(shuf, null_size=2000)
    assert (res2.mean_average_precision < 0.7).all() and not res2.consistent.any()


def test_nsc_hand_made():
    # 4 compounds, 2 MoAs. Each compound's nearest profile overall is its own other dose;
    # excluding the same compound, A's nearest is B (same MoA) and C's nearest is A
    # (wrong MoA), D's nearest is C.
    x = np.array(
        [
            [1.0, 0.0, 0.0],  # A d1  moa X
            [1.0, 0.01, 0.0],  # A d2
            [0.9, 0.3, 0.0],  # B  moa X
            [0.7, 0.0, 0.7],  # C  moa Y  -> nearest other compound: A (0.707) vs D (0.6?)
            [0.0, 0.0, 1.0],  # D  moa Y
        ]
    )
    df = pd.DataFrame(x, columns=["f1", "f2", "f3"])
    df["Metadata_Compound"] = ["A", "A", "B", "C", "D"]
    df["Metadata_MoA"] = ["X", "X", "X", "Y", "Y"]
    res = A.nsc_accuracy(df, batch_column=None)
    p = res.predictions
    assert list(p.neighbor_compound) == ["B", "B", "A", "A", "C"]
    assert list(p.correct) == [True, True, True, False, True]
    assert res.accuracy == pytest.approx(4 / 5)
    assert np.isnan(res.accuracy_nscb)
    # with batches: A and B share a batch, so under NSCB A's neighbour must be C
    df["Metadata_Batch"] = ["b1", "b1", "b1", "b2", "b2"]
    res = A.nsc_accuracy(df)
    assert list(res.predictions.predicted_moa_nscb) == ["Y", "Y", "Y", "X", "X"]
    assert res.accuracy_nscb == 0.0


def test_nsc_on_screen(screen):
    cons = consensus_of(screen)
    res = A.nsc_accuracy(cons[cons.Metadata_Compound != "INACT0"])
    assert res.accuracy == 1.0
    # the same-compound neighbour is never used
    assert (res.predictions.neighbor_compound != res.predictions.Metadata_Compound).all()


def test_umap_and_cluster_deterministic(screen):
    cons = consensus_of(screen)
    cons = cons[cons.Metadata_Role == "trt"].reset_index(drop=True)
    e1 = A.embed_umap(cons, seed=7, n_neighbors=5)
    e2 = A.embed_umap(cons, seed=7, n_neighbors=5)
    assert list(e1.columns) == ["UMAP_1", "UMAP_2"] and len(e1) == len(cons)
    np.testing.assert_array_equal(e1.to_numpy(), e2.to_numpy())
    l1 = A.cluster(e1.to_numpy(), "hdbscan", min_cluster_size=3)
    l2 = A.cluster(e2.to_numpy(), "hdbscan", min_cluster_size=3)
    np.testing.assert_array_equal(l1, l2)
    x = cons[A.feature_columns(cons)].to_numpy()
    h = A.cluster(x, "hierarchical", n_clusters=4)
    assert set(h) == {0, 1, 2, 3}
    from sklearn.metrics import adjusted_rand_score

    top = (cons.Metadata_Dose >= 3.0) & (cons.Metadata_MoA != "none")
    hx = A.cluster(x[top.to_numpy()], "hierarchical", n_clusters=3)
    assert adjusted_rand_score(cons.Metadata_MoA[top], hx) == 1.0
    with pytest.raises(ValueError, match="method"):
        A.cluster(x, "kmeans")


def test_nearest_neighbors_exclude_same_compound(screen):
    cons = consensus_of(screen)
    nn = A.nearest_neighbors(cons, k=2)
    assert (nn["Metadata_Neighbor_1"] != cons["Metadata_Compound"]).all()
    assert (nn["Metadata_Neighbor_2"] != cons["Metadata_Compound"]).all()
    assert (nn["Metadata_Neighbor_1_Similarity"] >= nn["Metadata_Neighbor_2_Similarity"]).all()
    c00 = nn[(cons.Metadata_Compound == "C00") & (cons.Metadata_Dose == 10.0)].iloc[0]
    assert c00["Metadata_Neighbor_1"] == "C01"


def test_simes_pvalue():
    # min over sorted p of m * p_(i) / i; NaN ignored; capped at 1
    assert A.simes_pvalue(np.array([0.01, 0.04, 0.9])) == pytest.approx(min(0.03, 0.06, 0.9))
    assert A.simes_pvalue(np.array([0.02, np.nan, 0.02])) == pytest.approx(0.02)
    assert A.simes_pvalue(np.array([0.5, 0.9])) == pytest.approx(0.9)
    assert A.simes_pvalue(np.array([0.7])) == pytest.approx(0.7)
    assert np.isnan(A.simes_pvalue(np.array([np.nan])))
    # never above Bonferroni
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(rng.integers(1, 8))
        assert A.simes_pvalue(p) <= min(1.0, p.size * p.min()) + 1e-15


def test_simes_pvalue_is_valid_under_the_null():
    # uniform independent p-values: P(simes <= alpha) = alpha (Simes 1986), while the smallest
    # p-value of 6 doses is below alpha far more often
    rng = np.random.default_rng(1)
    p = rng.random((20000, 6))
    simes = np.array([A.simes_pvalue(r) for r in p])
    assert abs((simes <= 0.05).mean() - 0.05) < 0.008
    assert (p.min(axis=1) <= 0.05).mean() > 0.2


def test_compound_activity_hand_made():
    act = pd.DataFrame(
        {
            "Metadata_Compound": ["A", "A", "A", "B", "B", "C", "C", "D"],
            "Metadata_Dose": [1.0, 3.0, 10.0, 1.0, 10.0, 1.0, 10.0, 1.0],
            "Metadata_MoA": ["m1"] * 3 + ["m2"] * 2 + ["none"] * 2 + ["m3"],
            "p_value": [0.5, 0.001, 0.002, 0.04, 0.03, 0.6, 0.3, np.nan],
            "active": [False, True, True, False, False, False, False, False],
        }
    )
    before = act.copy()
    out = A.compound_activity(act, q_threshold=0.05).set_index("Metadata_Compound")
    pd.testing.assert_frame_equal(act, before)
    assert list(out.index) == ["A", "B", "C", "D"]
    # Simes: A min(3*.001/1, 3*.002/2, 3*.5/3) = .003; B min(2*.03, 2*.04/2) = .04; C .6
    np.testing.assert_allclose(out["p_value"].iloc[:3], [0.003, 0.04, 0.6])
    assert np.isnan(out.loc["D", "p_value"]) and out.loc["D", "n_doses"] == 0
    # BH over the 3 tested compounds: .009, .06, .6
    np.testing.assert_allclose(out["q_value"].iloc[:3], [0.009, 0.06, 0.6])
    assert out["active"].tolist() == [True, False, False, False]
    assert out.loc["A", "n_active_doses"] == 2 and out.loc["A", "Metadata_MoA"] == "m1"
    with pytest.raises(ValueError, match="p_value"):
        A.compound_activity(act.drop(columns="p_value"))
    with pytest.raises(ValueError, match="combine"):
        A.compound_activity(act, combine="fisher")
    # smallest p-value per compound: .001, .03, .3 -> BH .003, .045, .3
    low = A.compound_activity(act, combine="min").set_index("Metadata_Compound")
    np.testing.assert_allclose(low["p_value"].iloc[:3], [0.001, 0.03, 0.3])
    np.testing.assert_allclose(low["q_value"].iloc[:3], [0.003, 0.045, 0.3])
    assert low["active"].tolist() == [True, True, False, False]


def test_compound_activity_on_screen(screen):
    df = screen.copy()
    # two fake compounds of negcon wells, three "doses" each: never called active
    neg_idx = df.index[df["Metadata_Role"] == "negcon"][:12]
    df.loc[neg_idx, "Metadata_Compound"] = ["FAKE1"] * 6 + ["FAKE2"] * 6
    df.loc[neg_idx, "Metadata_Role"] = "trt"
    df.loc[neg_idx, "Metadata_Dose"] = [1.0, 1.0, 3.0, 3.0, 10.0, 10.0] * 2
    act = A.phenotypic_activity(df, null_size=2000, seed=1)
    comp = A.compound_activity(act).set_index("Metadata_Compound")
    real = [c for c in comp.index if c.startswith("C")]
    assert comp.loc[real, "active"].all()
    assert not comp.loc[["FAKE1", "FAKE2", "INACT0"], "active"].any()
    assert (comp["n_doses"] == 3).all()
    assert (comp["q_value"] >= comp["p_value"] - 1e-12).all()


def test_run_analysis(screen):
    cons = consensus_of(screen)
    res = A.run_analysis(screen, cons, {"null_size": 1000, "umap": {"n_neighbors": 5}})
    cl = res.clusters
    assert {"UMAP_1", "UMAP_2", "Metadata_Cluster", "Metadata_Active"} <= set(cl.columns)
    assert "DMSO" not in set(cl.Metadata_Compound)
    assert (cl.loc[~cl.Metadata_Active, "Metadata_Cluster"] == -1).all()
    assert res.summary["nsc_accuracy"] == 1.0
    dr = res.dose_response.set_index("Metadata_Compound")
    assert not dr.loc["INACT0", "active"] and dr.loc["C00", "active"]
    assert not dr.loc["INACT0", "compound_active"] and dr.loc["C00", "compound_active"]
    assert (dr["compound_q_value"] >= dr["compound_p_value"]).all()
    assert res.summary["n_active_compounds"] == int(dr["compound_active"].sum())
    assert dr.loc["C00", "dose_distance_spearman"] > 0.9
    assert set(res.consistency.Metadata_MoA) == {"moa0", "moa1", "moa2"}
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'nul_size' under 'analysis'"):
        A.run_analysis(screen, cons, {"nul_size": 3})


LINCS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "lincs_profiles"
    / "SQ00015054_normalized_feature_select.csv.gz"
)


@pytest.mark.skipif(not LINCS.exists(), reason=f"{LINCS} not present")
def test_activity_on_lincs_plate():
    from hcsflow.profiling import read_profiles_table

    prof = read_profiles_table(LINCS)
    # six DMSO wells spread over the plate (A01, A05, B03, F07, F11, J15) become a
    # pseudo-compound (6 "doses" like the real ones): not active. (Six adjacent edge wells,
    # A01-A06, share a position effect: q 0.06 here, and called with pvalue="permutation";
    # the other DMSO blocks of six adjacent wells are called by both nulls.)
    neg = prof.index[prof["Metadata_Role"] == "negcon"][::4]
    assert len(neg) == 6
    prof.loc[neg, "Metadata_Compound"] = "PSEUDO-DMSO"
    prof.loc[neg, "Metadata_Role"] = "trt"
    act = A.phenotypic_activity(prof, group_by=["Metadata_Compound"], null_size=2000)
    assert len(act) == prof.loc[prof.Metadata_Role == "trt", "Metadata_Compound"].nunique()
    assert not act.set_index("Metadata_Compound").loc["PSEUDO-DMSO", "active"]
    # a Cell Painting plate of bioactive compounds: many compounds are distinguishable
    assert act["active"].mean() > 0.3
    # the proteasome inhibitors have a strong, well-known phenotype
    prot = act[act["Metadata_MoA"].fillna("").str.contains("proteasome inhibitor")]
    assert len(prot) and prot["active"].all()


def test_activity_negcon_same_plate(screen):
    act = A.phenotypic_activity(screen, null_size=1000, negcon_same_plate=True, pvalue="copairs")
    top = act[(act.Metadata_Dose == 10.0) & act.Metadata_Compound.str.startswith("C")]
    assert top.active.all()
    with pytest.raises(ValueError, match="Metadata_Plate"):
        A.phenotypic_activity(screen.drop(columns="Metadata_Plate"), negcon_same_plate=True)
    with pytest.raises(ValueError, match="analysis.pvalue"):
        A.phenotypic_activity(screen, negcon_same_plate=True, pvalue="permutation")


def _brute_map_pvalue(x, members, negcons, strata):
    """Reference: enumerate every pseudo-group with the group's count per stratum."""
    from itertools import combinations, product

    pool = list(members) + list(negcons)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)

    def group_map(group):
        aps = []
        for i in group:
            others = [j for j in pool if j != i]
            order = sorted(others, key=lambda j: -float(xn[i] @ xn[j]))
            hits, precisions = 0, []
            for rank, j in enumerate(order, start=1):
                if j in group:
                    hits += 1
                    precisions.append(hits / rank)
            aps.append(np.mean(precisions))
        return float(np.mean(aps))

    observed = group_map(set(members))
    per_stratum = []
    for st in sorted(set(strata[list(members)])):
        k = int(sum(strata[m] == st for m in members))
        per_stratum.append(list(combinations([j for j in pool if strata[j] == st], k)))
    null = [group_map(set(sum(choice, ()))) for choice in product(*per_stratum)]
    return observed, sum(v >= observed - 1e-12 for v in null) / len(null)


def test_permutation_pvalue_matches_enumeration_and_copairs_map():
    rng = np.random.default_rng(3)
    n_neg = 12
    x = rng.normal(size=(n_neg + 7, 6))
    x[n_neg : n_neg + 2] += 1.2  # a weak treatment of 2 wells
    x[n_neg + 2 : n_neg + 5] += 3.0  # a strong one of 3 wells
    groups = np.array([-1] * n_neg + [0, 0, 1, 1, 1, 2, 2])  # group 2: two wells, no effect
    is_neg = groups == -1
    strata = np.array([0, 1] * (n_neg // 2) + [0, 1, 0, 1, 1, 0, 1])
    for st in (None, strata):
        res = A.permutation_map_pvalues(x, groups, is_neg, strata=st, null_size=100000)
        s_ = np.zeros(len(x), int) if st is None else st
        for g in (0, 1, 2):
            members = np.flatnonzero(groups == g)
            obs, p = _brute_map_pvalue(x, members, np.flatnonzero(is_neg), s_)
            row = res.set_index("group").loc[g]
            assert row["mean_average_precision"] == pytest.approx(obs, abs=1e-12)
            assert row["p_value"] == pytest.approx(p, abs=1e-12)
    assert res.set_index("group").loc[1, "p_value"] < 0.01
    # the observed statistic is copairs' mAP against negcon
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(
        Metadata_Compound=np.where(is_neg, "DMSO", [f"c{g}" for g in groups]),
        Metadata_Dose=1.0,
        Metadata_Role=np.where(is_neg, "negcon", "trt"),
    )
    copairs = A.phenotypic_activity(df, pvalue="copairs", null_size=1000)
    perm = A.phenotypic_activity(df, null_size=1000, pvalue="permutation")
    np.testing.assert_allclose(
        perm["mean_average_precision"], copairs["mean_average_precision"], atol=1e-12
    )
    assert not perm["p_value"].equals(copairs["p_value"])


def test_permutation_pvalue_is_valid_under_the_null_and_more_powerful():
    rng = np.random.default_rng(11)
    n_neg, n_groups = 40, 150
    # null: pseudo-treatments of two wells drawn like the negcon wells
    x = rng.normal(size=(n_neg + 2 * n_groups, 8))
    groups = np.concatenate([np.full(n_neg, -1), np.repeat(np.arange(n_groups), 2)])
    is_neg = groups == -1
    p = np.concatenate(
        [
            A.permutation_map_pvalues(
                x[np.r_[0:n_neg, n_neg + 2 * g : n_neg + 2 * g + 2]],
                groups[np.r_[0:n_neg, n_neg + 2 * g : n_neg + 2 * g + 2]],
                is_neg[np.r_[0:n_neg, n_neg + 2 * g : n_neg + 2 * g + 2]],
            )["p_value"].to_numpy()
            for g in range(n_groups)
        ]
    )
    assert 0.0 <= np.mean(p < 0.05) <= 0.09
    assert 0.0 <= np.mean(p < 0.2) <= 0.28
    # four replicates of a moderate effect: copairs compares their mAP with the null of one
    # well's AP, which ignores the averaging; the permutation null does not
    rng = np.random.default_rng(5)
    x4 = rng.normal(size=(n_neg + 4, 8))
    x4[n_neg:, 0] += 1.8
    g4 = np.r_[np.full(n_neg, -1), np.zeros(4, int)]
    perm = A.permutation_map_pvalues(x4, g4, g4 == -1)
    df = pd.DataFrame(x4, columns=[f"f{i}" for i in range(8)]).assign(
        Metadata_Compound=np.where(g4 == -1, "DMSO", "c"),
        Metadata_Dose=1.0,
        Metadata_Role=np.where(g4 == -1, "negcon", "trt"),
    )
    cp = A.phenotypic_activity(df, pvalue="copairs")
    assert perm["mean_average_precision"].iloc[0] == pytest.approx(
        cp["mean_average_precision"].iloc[0]
    )
    assert perm["p_value"].iloc[0] < 0.01 < 0.02 < cp["p_value"].iloc[0]


def test_auto_pvalue_follows_the_number_of_wells(screen):
    rng = np.random.default_rng(2)
    n_neg = 20
    x = rng.normal(size=(n_neg + 6, 5))
    base = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)]).assign(
        Metadata_Dose=1.0,
        Metadata_Role=["negcon"] * n_neg + ["trt"] * 6,
        Metadata_Plate=["P1", "P2"] * ((n_neg + 6) // 2),
    )
    pairs = base.assign(Metadata_Compound=["DMSO"] * n_neg + ["a", "a", "b", "b", "c", "c"])
    triples = base.assign(Metadata_Compound=["DMSO"] * n_neg + ["a"] * 3 + ["b"] * 3)
    auto2 = A.phenotypic_activity(pairs, null_size=500, pvalue="auto")
    assert set(auto2["p_value_method"]) == {"copairs"}
    pd.testing.assert_frame_equal(
        auto2, A.phenotypic_activity(pairs, null_size=500, pvalue="copairs")
    )
    auto3 = A.phenotypic_activity(triples, null_size=500, pvalue="auto")
    assert set(auto3["p_value_method"]) == {"permutation"}
    pd.testing.assert_frame_equal(
        auto3, A.phenotypic_activity(triples, null_size=500, pvalue="permutation")
    )
    same_plate = A.phenotypic_activity(
        triples, null_size=500, negcon_same_plate=True, pvalue="auto"
    )
    assert set(same_plate["p_value_method"]) == {"copairs"}


def test_adjacent_wells():
    assert A.adjacent_wells(["O19", "O20", "O21", "O22", "O23", "O24"])
    assert A.adjacent_wells(["B3", "A03", "C03"])  # one column, rows A-C
    assert A.adjacent_wells(["Z01", "AA01"])
    assert not A.adjacent_wells(["A01", "A03"])  # a gap
    assert not A.adjacent_wells(["A01", "B02"])
    assert not A.adjacent_wells(["A01"])
    assert not A.adjacent_wells(["A01", "A02"], plates=["P1", "P2"])
    assert A.adjacent_wells(["A01", "A02"], plates=["P1", "P1"])


@pytest.mark.skipif(not LINCS.exists(), reason=f"{LINCS} not present")
def test_lincs_dose_series_are_flagged_adjacent(caplog):
    from hcsflow.profiling import read_profiles_table

    prof = read_profiles_table(LINCS)
    with caplog.at_level("WARNING", logger="hcsflow.analysis"):
        act = A.phenotypic_activity(prof, group_by=["Metadata_Compound"], null_size=200)
    # each compound's six doses fill six neighbouring wells of a row
    six = act["n_replicates"] == 6
    assert six.sum() >= 40 and act.loc[six, "adjacent_wells"].all()
    assert "side by side" in caplog.text


def test_analysis_params_take_their_defaults_from_the_schema():
    from hcsflow.config import SCHEMA_PATH, load_schema

    props = load_schema(SCHEMA_PATH)["properties"]["analysis"]["properties"]
    cfg = A.AnalysisParams.from_config().to_config()
    assert set(cfg) == set(props)
    for key, spec in props.items():
        if "properties" in spec:
            assert cfg[key] == {k: v["default"] for k, v in spec["properties"].items()}, key
        else:
            assert cfg[key] == spec["default"], key
    p = A.AnalysisParams.from_config({"null_size": 500, "cluster": {"method": "hierarchical"}})
    assert p.null_size == 500 and p.cluster.method == "hierarchical"
    assert p.cluster.linkage == props["cluster"]["properties"]["linkage"]["default"]
    assert A.AnalysisParams.from_config(p.to_config()) == p
    with pytest.raises(ValueError, match="null_size"):
        A.AnalysisParams.from_config({"null_size": 5})
