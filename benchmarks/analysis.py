"""Quality of the analysis stage on simulated screens with known truth, and on a real plate.

For each simulated screen (replicate plates of the simulator's default plate map, which has
compounds of seven MoAs, inactive compounds, DMSO and a positive control), per-cell features
are measured inside the simulator's true masks (``truth_cell_table``), aggregated per well,
normalized to DMSO per plate, feature-selected and reduced to consensus profiles with the
project's profiling functions, then analysed with :func:`hcsflow.analysis.run_analysis`.

Printed per screen and feature set:

- ``active detected``: fraction of truly active treatments (compound x dose whose simulated
  effect is at least the simulator's activity threshold) called active at q < 0.05;
- ``inactive called``: fraction of treatments of inactive compounds called active;
- ``sub-threshold called``: fraction of doses of active compounds below the threshold that
  are called active (these have a real, small effect);
- ``negcon called``: fraction of pseudo-treatments made of DMSO wells (one well per plate,
  held out of the negative controls; 6 per plate, `--negcon-repeats` random hold-outs) called active;
- ``MoA mAP``: mean over MoAs of the consistency mAP (active treatments), and the fraction of
  MoAs with q < 0.05;
- ``NSC``: not-same-compound 1-NN MoA accuracy over active treatments;
- ``ARI``: adjusted Rand index of clusters (default config: HDBSCAN on UMAP) against MoA over
  the clustered treatments (active ones; HDBSCAN noise counts as one more cluster), and of
  hierarchical clustering (cosine, average linkage) cut at the number of MoAs.

``--cell-variants`` makes the well profiles in other ways than the well median (per-well MAD
and percentiles, ``profiles.dispersion``; medians of cells projected on PCA or FA axes of the
DMSO cells, ``profiles.projection``); ``--second-batch SEED [SEED ...]`` adds as many plates of a second
(third, ...) imaging batch (other pixel size, vignetting and density, and staining and camera drawn from
SEED unless ``--batch-staining default``) and prints NSC and NSCB over per-batch consensus
profiles.

Then the activity and consistency of the real LINCS plate (``../shared/data/lincs_profiles``).

Run from the repository root (CPU heavy: simulated plates are cached in ``--workdir``)::

    nice -n 10 python benchmarks/analysis.py       # the default screen: 4 x 96 wells, 540 px, 2 sites
    nice -n 10 python benchmarks/analysis.py --screens 96x2 384x2 --first-seed 5
    nice -n 10 python benchmarks/analysis.py --no-lincs --screens 96x2 --second-batch 41 \
        --cell-variants median median+mad pca fa --variants default harmony
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _tables import markdown  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hcsflow import analysis as A  # noqa: E402
from hcsflow import profiling as P  # noqa: E402
from hcsflow.profiling.position import correct_position  # noqa: E402

LINCS = (
    REPO.parent
    / "shared"
    / "data"
    / "lincs_profiles"
    / "SQ00015054_normalized_feature_select.csv.gz"
)


#: Variants a screening scientist would try to raise treatment-level power, each a change of
#: the default configuration: (name, campaign overrides, analysis overrides). No variant is
#: tuned on the truth labels; each is a documented option of the workflow.
VARIANTS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "no_sphering": ({"sphering": {"enabled": False}}, {}),
    "sphering": ({"sphering": {"enabled": True}}, {}),
    "sphering_no_shrinkage": ({"sphering": {"enabled": True, "shrinkage": 0.0}}, {}),
    "sphering_zca_cor": ({"sphering": {"enabled": True, "method": "ZCA-cor"}}, {}),
    "no_feature_select": ({"feature_select": {"operations": []}}, {}),
    "no_correlation_select": (
        {"feature_select": {"operations": ["blocklist", "na", "variance", "outlier"]}},
        {},
    ),
    "consensus_mean": ({"consensus": "mean"}, {}),
    "position": ({"position": {"enabled": True, "fit_on": "all"}}, {}),
    "position_negcon": ({"position": {"enabled": True, "fit_on": "negcon"}}, {}),
    "correlation": ({}, {"distance": "correlation"}),
    "euclidean": ({}, {"distance": "euclidean"}),
    "sphering+correlation": ({"sphering": {"enabled": True}}, {"distance": "correlation"}),
    "negcon_same_plate": ({}, {"negcon_same_plate": True}),
    "harmony": ({"harmony": {"enabled": True}}, {}),
    "permutation_pvalue": ({}, {"pvalue": "permutation"}),
    "auto_pvalue": ({}, {"pvalue": "auto"}),
}


#: How well profiles are made from the cells (config ``profiles``): the well median or mean,
#: normalized per plate by mad_robustize or standardize against DMSO or all wells, with
#: dispersion features beside it, or medians of cells projected on components of the
#: campaign's DMSO cells (``profiles.projection``).
CELL_VARIANTS: dict[str, dict] = {
    "median": {},
    "mean": {"aggregation": "mean"},
    "median/standardize": {"normalization": "standardize"},
    "median/all-wells": {"control_role": "all"},
    "median+mad": {"dispersion": ["mad"]},
    "median+q10,q90": {"dispersion": ["q10", "q90"]},
    "median+mad,q10,q90": {"dispersion": ["mad", "q10", "q90"]},
    "pca": {"projection": "pca"},
    "fa": {"projection": "fa"},
}


def variant_config(camp: dict, name: str) -> tuple[dict, dict]:
    """Campaign section and analysis overrides of one variant."""
    camp_over, ana_over = VARIANTS[name]
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in camp.items()}
    for k, v in camp_over.items():
        out[k] = {**out[k], **v} if isinstance(out[k], dict) else v
    return out, dict(ana_over)


def campaign_config() -> dict:
    """The validated default ``campaign`` section of config/config.yaml."""
    import yaml

    from hcsflow.config import SCHEMA_PATH, _Validator, load_schema

    schema = load_schema(SCHEMA_PATH)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    camp = {"campaign": cfg.get("campaign", {})}
    sub = {"type": "object", "properties": {"campaign": schema["properties"]["campaign"]}}
    _Validator(sub).validate(camp)
    return camp["campaign"]


#: Optics of a second imaging batch (``--second-batch``): another objective (0.60 instead of
#: 0.65 um/px), elliptic instead of radial vignetting, 70 % of the cell density.
SECOND_BATCH = {"image_mpp": 0.6, "vignetting": "elliptic", "density": 0.7}


def simulate(
    workdir: Path,
    wells: int,
    n_plates: int,
    size: int,
    sites: int,
    workers: int,
    first_seed: int = 1,
    second_batch: bool = False,
    staining_seed: int | None = None,
):
    """Simulated plate folders (cached), their per-cell truth tables, the treatments and the
    tables' paths.

    Plate ``i`` (1-based) is simulated with seed ``first_seed + i - 1``; with the default
    ``first_seed`` 1 the plates are the demo's (``make demo``: seeds 1-4) at the same size.
    With ``second_batch`` the plates are imaged as a second batch (:data:`SECOND_BATCH`) and
    cached in a folder of their own; with ``staining_seed`` as well, the batch's staining and
    camera are drawn from it (:func:`hcsflow.simulate.batch_appearance`), the same for all
    its plates.
    """
    from hcsflow.simulate import batch_appearance, simulate_plate, truth_cell_table

    optics = dict(SECOND_BATCH) if second_batch else {}
    folder = f"{wells}w_{size}px_{sites}s" + ("_batchB" if second_batch else "")
    if staining_seed is not None:
        optics["appearance"] = batch_appearance(np.random.default_rng(staining_seed))
        folder += f"_stain{staining_seed}"
    cells, treatments, tables = [], [], []
    for i in range(first_seed, first_seed + n_plates):
        plate = f"BENCH{wells}-P{i}"
        out = workdir / folder / plate
        if not (out / "truth" / "simulation.json").exists():
            simulate_plate(
                out,
                plate=plate,
                n_wells=wells,
                sites=sites,
                size=size,
                seed=i,
                n_workers=workers,
                **optics,
            )
        table = out / "truth" / "cells.parquet"
        if table.exists():
            c = pd.read_parquet(table)
        else:
            c = truth_cell_table(out, n_workers=workers)
            c.to_parquet(table)
        cells.append(c)
        tables.append(table)
        treatments.append(pd.read_csv(out / "truth" / "treatments.csv"))
    truth = treatments[0]
    return cells, truth, tables


def well_profiles(
    tables: list[Path], cell_variant: str = "median", n_components: int = 50
) -> pd.DataFrame:
    """Aggregate and normalize (mad_robustize to DMSO) each plate's per-cell table.

    ``tables`` are the plates' ``truth/cells.parquet``; a projection (``cell_variant`` pca or
    fa) is fitted on the DMSO cells of all of them, as the workflow's ``cell_projection`` rule
    does. Empty wells are dropped after aggregation.
    """
    from hcsflow.profiling import cellspace as C

    opts = CELL_VARIANTS[cell_variant]
    meta = [
        "Metadata_Compound",
        "Metadata_Dose",
        "Metadata_Role",
        "Metadata_MoA",
        "Metadata_Target",
    ]
    units = model = None
    if "projection" in opts:
        units = [C.negcon_sample([t], t.parent.parent.name) for t in tables]
        model = C.fit_cell_projection(units, opts["projection"], n_components=n_components)
    plates = []
    for i, t in enumerate(tables):
        prof = P.plate_profiles(
            [t],
            aggregation=opts.get("aggregation", "median"),
            normalization="none",
            dispersion=opts.get("dispersion", ()),
            projection=None if model is None else (units[i], model),
        )
        plates.append(
            prof[prof["Metadata_Role"] != "empty"].drop(columns=["Metadata_Site"], errors="ignore")
        )
    prof = pd.concat(plates, ignore_index=True)
    prof = P.normalize_plates(
        prof,
        normalization=opts.get("normalization", "mad_robustize"),
        control_role=opts.get("control_role", "negcon"),
    )
    if "Metadata_Batch" not in prof:
        prof["Metadata_Batch"] = "batch1"
    assert set(meta) <= set(prof.columns)
    return prof


def negcon_pseudo(profiles: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Hold out ``n`` DMSO wells per plate as pseudo-treatments (one well per plate each).

    Pseudo-treatment j is dose ``j % 3 + 1`` of pseudo-compound ``NEG-{j // 3 + 1}``, so that
    the compound-level test sees DMSO pseudo-compounds with three doses, like a dose series.
    """
    rng = np.random.default_rng(seed)
    out = profiles.copy()
    for _, idx in out[out["Metadata_Role"] == "negcon"].groupby("Metadata_Plate").groups.items():
        pick = rng.permutation(np.asarray(idx))[:n]
        for j, i in enumerate(pick):
            out.loc[i, ["Metadata_Compound", "Metadata_Role", "Metadata_MoA"]] = [
                f"NEG-{j // 3 + 1}",
                "trt",
                "none",
            ]
            out.loc[i, "Metadata_Dose"] = float(j % 3 + 1)
    return out


def evaluate(profiles: pd.DataFrame, consensus: pd.DataFrame, truth: pd.DataFrame, cfg: dict):
    """Metrics of one analysis run against the simulator's truth."""
    from sklearn.metrics import adjusted_rand_score

    res = A.run_analysis(profiles, consensus, cfg)
    act = res.activity.merge(
        truth.rename(columns={"compound": "Metadata_Compound", "dose_um": "Metadata_Dose"})[
            ["Metadata_Compound", "Metadata_Dose", "truly_active", "moa"]
        ],
        on=["Metadata_Compound", "Metadata_Dose"],
        how="left",
    )
    trt = act[act["Metadata_Role"] == "trt"]
    truly = trt["truly_active"].astype(bool)
    inactive_cmp = trt["moa"] == "inactive"
    sub = ~truly & ~inactive_cmp
    m = {
        "active detected": f"{trt.loc[truly, 'active'].mean():.2f} ({int(trt.loc[truly, 'active'].sum())}/{int(truly.sum())})",
        "inactive called": f"{trt.loc[inactive_cmp, 'active'].mean():.2f} ({int(trt.loc[inactive_cmp, 'active'].sum())}/{int(inactive_cmp.sum())})",
        "sub-threshold called": f"{trt.loc[sub, 'active'].mean():.2f} ({int(trt.loc[sub, 'active'].sum())}/{int(sub.sum())})",
    }
    # compound level: a compound is truly active when at least one dose is; it is called active
    # when its dose p-values combined (Simes; or the smallest, as copairs' hierarchical first
    # stage) pass BH over compounds at q < 0.05
    tc = truth.rename(columns={"compound": "Metadata_Compound"}).groupby("Metadata_Compound")
    truth_cmp = pd.DataFrame(
        {"truly_active": tc["truly_active"].any(), "moa": tc["moa"].first()}
    ).reset_index()
    trt_act = res.activity[res.activity["Metadata_Role"] == "trt"]
    for combine, label in (("simes", ""), ("min", " (min-p)")):
        comp = A.compound_activity(trt_act, combine=combine)
        dr = comp.merge(truth_cmp, on="Metadata_Compound", how="inner")
        t_cmp = dr["truly_active"].astype(bool)
        i_cmp = dr["moa"] == "inactive"
        m["compounds detected" + label] = (
            f"{dr.loc[t_cmp, 'active'].mean():.2f} "
            f"({int(dr.loc[t_cmp, 'active'].sum())}/{int(t_cmp.sum())})"
        )
        m["inactive compounds called" + label] = (
            f"{dr.loc[i_cmp, 'active'].mean():.2f} "
            f"({int(dr.loc[i_cmp, 'active'].sum())}/{int(i_cmp.sum())})"
        )
    con = res.consistency
    m["MoA mAP"] = (
        f"{con['mean_average_precision'].mean():.2f} ({int(con['consistent'].sum())}/{len(con)} q<0.05)"
    )
    m["NSC"] = f"{res.summary['nsc_accuracy']:.2f}"
    cl = res.clusters
    sel = (
        cl["Metadata_Active"] & (cl["Metadata_Role"] == "trt") & (cl["Metadata_MoA"] != "inactive")
    )
    m["ARI hdbscan"] = (
        f"{adjusted_rand_score(cl.loc[sel, 'Metadata_MoA'], cl.loc[sel, 'Metadata_Cluster']):.2f}"
        f" ({int((cl.loc[sel, 'Metadata_Cluster'] < 0).sum())} noise)"
    )
    feats = [f for f in A.feature_columns(consensus) if f in set(A.feature_columns(profiles))]
    cons_sel = consensus.reset_index(drop=True)
    cons_sel = cons_sel[cons_sel["Metadata_Role"] != "negcon"].reset_index(drop=True)
    x = cons_sel.loc[sel.to_numpy(), feats].to_numpy()
    k = int(cl.loc[sel, "Metadata_MoA"].nunique())
    if len(x) > k > 1:
        h = A.cluster(x, "hierarchical", n_clusters=k, metric="cosine", linkage="average")
        m["ARI hierarchical"] = f"{adjusted_rand_score(cl.loc[sel, 'Metadata_MoA'], h):.2f}"
    else:
        m["ARI hierarchical"] = "n/a"
    return m, res


def run_screen(args, wells: int, n_plates: int, camp: dict) -> list[dict]:
    t0 = time.perf_counter()
    # the first batch, then one more imaging batch per --second-batch seed (other objective,
    # vignetting and density, and its own staining and camera), all of the same plate map
    drawn = args.batch_staining == "drawn"
    specs = [(args.first_seed, False, None)]
    specs += [(seed, True, seed if drawn else None) for seed in args.second_batch or ()]
    cells, tables, batches, parts = [], [], [], []
    truth = None
    for k, (seed, second, staining) in enumerate(specs):
        more, more_truth, more_tables = simulate(
            Path(args.workdir),
            wells,
            n_plates,
            args.size,
            args.sites,
            args.workers,
            seed,
            second_batch=second,
            staining_seed=staining,
        )
        truth = more_truth if truth is None else truth
        cells += more
        tables += more_tables
        batches += [f"batch{k + 1}"] * len(more_tables)
        seeds = f"seeds {seed}-{seed + n_plates - 1}"
        if k == 0:
            parts.append(
                f"{n_plates} x {wells} wells, {args.size} px, {args.sites} site(s), {seeds}"
            )
        else:
            parts.append(f"batch {k + 1} {seeds}")
            if staining is not None:
                parts[-1] += f" (staining and camera drawn from {seed})"
    screen = " + ".join(parts)
    t_sim = time.perf_counter() - t0
    n_cells = sum(len(c) for c in cells)
    n_wells = sum(c.groupby("Metadata_Well").ngroups for c in cells)
    rows = []
    for cell_variant in args.cell_variants:
        prof = well_profiles(tables, cell_variant)
        plate_batch = dict(zip([c["Metadata_Plate"].iloc[0] for c in cells], batches, strict=True))
        prof["Metadata_Batch"] = prof["Metadata_Plate"].map(plate_batch)
        rows += _screen_rows(
            args, camp, prof, truth, screen, cell_variant, n_cells / n_wells, t_sim
        )
    return rows


def batch_retrieval(profiles: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """NSC and NSCB over per-batch consensus profiles of the truly active treatments: each
    compound x dose x batch profile is given the MoA of its nearest profile of another compound
    (NSC), and of another compound in another batch (NSCB)."""
    cons = P.consensus(profiles, by=("Metadata_Compound", "Metadata_Dose", "Metadata_Batch"))
    active = truth.loc[truth["truly_active"].astype(bool), ["compound", "dose_um"]]
    keys = set(zip(active["compound"], active["dose_um"], strict=True))
    sel = [
        (c, d) in keys
        for c, d in zip(cons["Metadata_Compound"], cons["Metadata_Dose"], strict=True)
    ]
    res = A.nsc_accuracy(cons[sel].reset_index(drop=True), batch_column="Metadata_Batch")
    n = len(res.predictions)
    return {"NSC per batch": f"{res.accuracy:.2f} (n={n})", "NSCB": f"{res.accuracy_nscb:.2f}"}


def _screen_rows(args, camp, prof, truth, screen, cell_variant, cells_per_well, t_sim):
    rows = []
    for variant in args.variants:
        vcamp, vana = variant_config(camp, variant)
        cprof, cons, _ = P.campaign_profiles(prof, vcamp)
        for fdr in args.fdr:
            cfg = {"null_size": args.null_size, "fdr": fdr, **vana}
            t1 = time.perf_counter()
            m, _ = evaluate(cprof, cons, truth, cfg)
            t_an = time.perf_counter() - t1
            if cprof["Metadata_Batch"].nunique() > 1:
                m.update(batch_retrieval(cprof, truth))
            called = total = c_called = c_total = 0
            for rep in range(args.negcon_repeats):
                # held out before the campaign steps, so that the DMSO wells of the
                # pseudo-treatments are not part of the sphering fit (as a treatment's are not)
                pseudo = negcon_pseudo(prof, n=args.negcon_pseudo, seed=rep)
                pseudo = P.campaign_profiles(pseudo, vcamp)[0]
                act = A.phenotypic_activity(
                    pseudo,
                    null_size=args.null_size,
                    fdr=fdr,
                    distance=cfg.get("distance", "cosine"),
                    negcon_same_plate=cfg.get("negcon_same_plate", False),
                    pvalue=cfg.get("pvalue", "copairs"),
                )
                neg = act[act["Metadata_Compound"].str.startswith("NEG-")]
                called, total = called + int(neg["active"].sum()), total + len(neg)
                comp = A.compound_activity(act)
                cneg = comp[comp["Metadata_Compound"].str.startswith("NEG-")]
                c_called, c_total = c_called + int(cneg["active"].sum()), c_total + len(cneg)
            m["negcon called"] = f"{called / total:.2f} ({called}/{total})"
            m["DMSO pseudo-compounds called"] = f"{c_called / c_total:.2f} ({c_called}/{c_total})"
            rows.append(
                {
                    "screen": screen,
                    "profiles": cell_variant,
                    "variant": variant,
                    "features": f"truth masks, simple ({len(A.feature_columns(cprof))} selected)",
                    "cells/well": f"{cells_per_well:.0f}",
                    "fdr": fdr,
                    **m,
                    "time": f"sim+measure {t_sim:.0f} s, analysis {t_an:.0f} s",
                }
            )
    return rows


def lincs(args, variant: str = "default") -> dict:
    if not LINCS.exists():
        return {}
    camp, ana_over = variant_config(campaign_config(), variant)
    sph = camp["sphering"]
    prof = P.read_profiles_table(LINCS)
    feats = A.feature_columns(prof)
    prof = prof[[c for c in prof.columns if c.startswith("Metadata_")] + feats]
    sphering = bool(sph["enabled"])
    pos = camp["position"]
    raw = prof

    def position(p: pd.DataFrame) -> pd.DataFrame:
        if not pos["enabled"]:
            return p
        return correct_position(
            p,
            feats,
            fit_on=pos["fit_on"],
            control={"Metadata_Role": "negcon"},
            shrinkage=pos["shrinkage"],
        )[0]

    def sphere(p: pd.DataFrame) -> pd.DataFrame:
        return P.sphere(
            p,
            control={"Metadata_Role": "negcon"},
            method=sph["method"],
            epsilon=sph["epsilon"],
            shrinkage=sph["shrinkage"],
        )

    prof = position(prof)
    if sphering:
        prof = sphere(prof)
    cons = P.consensus(prof)
    res = A.run_analysis(prof, cons, {"null_size": args.null_size, **ana_over})
    # DMSO wells as pseudo-compounds: two of 6 wells each (like a compound's 6 doses); the
    # other 12 DMSO wells stay negative controls; --negcon-repeats random splits
    dmso_called = dmso_total = 0
    for rep in range(args.negcon_repeats):
        rng = np.random.default_rng(rep)
        pseudo = raw.copy()
        idx = rng.permutation(np.flatnonzero((pseudo["Metadata_Role"] == "negcon").to_numpy()))
        for j in range(2):
            rows = pseudo.index[idx[6 * j : 6 * j + 6]]
            pseudo.loc[rows, "Metadata_Compound"] = f"NEG-{j + 1}"
            pseudo.loc[rows, "Metadata_Role"] = "trt"
        pseudo = position(pseudo)  # a negcon fit sees the remaining DMSO wells only
        if sphering:  # fitted on the remaining DMSO wells only
            pseudo = sphere(pseudo)
        act = A.phenotypic_activity(
            pseudo,
            group_by=["Metadata_Compound"],
            null_size=args.null_size,
            distance=ana_over.get("distance", "cosine"),
            pvalue=ana_over.get("pvalue", "copairs"),
        )
        neg = act[act["Metadata_Compound"].str.startswith("NEG-")]
        dmso_called += int(neg["active"].sum())
        dmso_total += len(neg)
    act = res.activity
    con = A.moa_consistency(
        prof[prof["Metadata_Role"] != "negcon"],
        null_size=args.null_size,
        distance=ana_over.get("distance", "cosine"),
    )  # all compounds: a single plate has too few active ones per MoA
    con = con[con["mean_average_precision"].notna()]
    nsc = A.nsc_accuracy(prof, distance=ana_over.get("distance", "cosine"))
    return {
        "variant": variant,
        "activity_by": ",".join(res.summary["activity_by"]),
        "compounds active": f"{int(act['active'].sum())}/{len(act)}",
        "median mAP": f"{act['mean_average_precision'].median():.2f}",
        "MoAs scored (>=2 compounds)": str(len(con)),
        "MoA mAP": f"{con['mean_average_precision'].mean():.2f} ({int(con['consistent'].sum())} q<0.05)",
        "NSC (all wells, MoAs with >=2 compounds)": f"{nsc.accuracy:.2f} (n={len(nsc.predictions)})",
        "DMSO pseudo-compounds called": f"{dmso_called}/{dmso_total}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--screens",
        nargs="+",
        default=["96x4"],
        help="WELLSxPLATES, e.g. 96x4 (the demo campaign) 96x2 384x2",
    )
    ap.add_argument("--size", type=int, default=540, help="field side in pixels")
    ap.add_argument("--sites", type=int, default=2, help="fields per well")
    ap.add_argument(
        "--first-seed", type=int, default=1, help="seed of the first plate (then +1 per plate)"
    )
    ap.add_argument("--workers", type=int, default=1, help="simulation worker processes")
    ap.add_argument("--workdir", default="/tmp/hcsflow-bench-analysis", help="plate cache")
    ap.add_argument("--null-size", type=int, default=10000)
    ap.add_argument("--negcon-pseudo", type=int, default=6, help="DMSO wells held out per plate")
    ap.add_argument("--negcon-repeats", type=int, default=20, help="random hold-outs of DMSO wells")
    ap.add_argument("--fdr", nargs="+", default=["bh", "hierarchical"], help="FDR methods")
    ap.add_argument("--no-lincs", action="store_true")
    ap.add_argument(
        "--cell-variants",
        nargs="+",
        default=["median"],
        choices=list(CELL_VARIANTS),
        help="how well profiles are made from cells (profiles.dispersion / projection)",
    )
    ap.add_argument(
        "--second-batch",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="add an imaging batch of as many plates per SEED, seeds SEED, SEED+1, ... "
        "(several SEEDs: several batches)",
    )
    ap.add_argument(
        "--batch-staining",
        choices=("drawn", "default"),
        default="drawn",
        help="the second batch's staining and camera: drawn from its SEED "
        "(hcsflow.simulate.batch_appearance; default) or the first batch's",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        choices=list(VARIANTS),
        help="configuration variants to measure (default: the default configuration)",
    )
    args = ap.parse_args()
    camp = campaign_config()
    rows = []
    for spec in args.screens:
        wells, n_plates = (int(v) for v in spec.lower().split("x"))
        new = run_screen(args, wells, n_plates, camp)
        rows += new
        print(markdown(new), flush=True)
    print("\n## Simulated screens\n")
    print(markdown(rows))
    if not args.no_lincs:
        lrows = [r for r in (lincs(args, v) for v in args.variants) if r]
        if lrows:
            print("\n## LINCS plate SQ00015054 (real, 384 wells, one well per compound x dose)\n")
            print(markdown(lrows))


if __name__ == "__main__":
    main()
