"""The analysis stage: activity, consistency, NSC accuracy, UMAP, clusters and dose response.

:class:`AnalysisParams` holds the configuration section ``analysis``; its defaults are those of
the configuration schema (``hcsflow/config.schema.yaml``), the one place they are written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.analysis._common import _features, _require
from hcsflow.analysis.activity import phenotypic_activity
from hcsflow.analysis.consistency import NSCResult, moa_consistency, nsc_accuracy
from hcsflow.analysis.dose import dose_response
from hcsflow.analysis.embedding import cluster, embed_umap, nearest_neighbors
from hcsflow.profiling.columns import DOSE, MOA, ROLE, feature_columns, metadata_columns

logger = logging.getLogger(__name__)

#: The tables written by the analysis stage.
OUTPUTS = ("activity", "consistency", "clusters", "dose_response")


@dataclass(frozen=True)
class UmapParams:
    """UMAP of consensus profiles (config ``analysis.umap``); see :func:`embed_umap`."""

    n_neighbors: int
    min_dist: float
    metric: str


@dataclass(frozen=True)
class ClusterParams:
    """Clustering of consensus profiles (config ``analysis.cluster``); see :func:`cluster`.

    ``space`` is ``"umap"`` (the 2-D embedding) or ``"features"``; with ``active_only`` only
    the treatments called active are clustered.
    """

    method: str
    space: str
    active_only: bool
    min_cluster_size: int
    min_samples: int | None
    n_clusters: int | None
    distance_threshold: float
    linkage: str

    def __post_init__(self) -> None:
        if self.space not in ("umap", "features"):
            raise ValueError(
                f"analysis.cluster.space must be 'umap' or 'features', got {self.space!r}"
            )


@dataclass(frozen=True)
class AnalysisParams:
    """The configuration section ``analysis`` (every key described in the schema).

    Build it with :meth:`from_config`, which fills the keys not given with the defaults of
    ``hcsflow/config.schema.yaml``.
    """

    activity_by: tuple[str, ...]
    negcon_role: str
    negcon_same_plate: bool
    distance: str
    q_threshold: float
    fdr: str
    pvalue: str
    null_size: int
    seed: int
    moa_active_only: bool
    n_neighbors: int
    umap: UmapParams
    cluster: ClusterParams

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any] | None = None, schema: str | None = None
    ) -> AnalysisParams:
        """Build from (part of) the configuration section ``analysis``.

        Parameters
        ----------
        cfg : mapping, optional
            Keys of the section; those missing take the schema's defaults.
        schema : path, optional
            The configuration schema (default: the package's ``config.schema.yaml``).

        Raises
        ------
        ValueError
            On an unknown key or a value the schema does not allow.
        """
        from hcsflow.config import config_section

        full = config_section("analysis", cfg, schema)
        top = {f.name: full[f.name] for f in dataclasses.fields(cls)}
        top["activity_by"] = tuple(full["activity_by"])
        top["umap"] = UmapParams(**full["umap"])
        top["cluster"] = ClusterParams(**full["cluster"])
        return cls(**top)

    def to_config(self) -> dict[str, Any]:
        """The configuration section these parameters stand for (JSON types)."""
        out = dataclasses.asdict(self)
        out["activity_by"] = list(self.activity_by)
        return out


@dataclass(frozen=True)
class AnalysisResult:
    """Tables written by the analysis stage and summary numbers for provenance."""

    activity: pd.DataFrame
    consistency: pd.DataFrame
    clusters: pd.DataFrame
    dose_response: pd.DataFrame
    summary: dict[str, Any]


def _as_params(config: AnalysisParams | Mapping[str, Any] | None) -> AnalysisParams:
    return config if isinstance(config, AnalysisParams) else AnalysisParams.from_config(config)


def run_analysis(
    profiles: pd.DataFrame,
    consensus: pd.DataFrame,
    config: AnalysisParams | Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Run the whole analysis stage: activity, consistency, NSC, UMAP, clusters.

    Parameters
    ----------
    profiles : DataFrame
        Well-level campaign profiles (normalized, feature-selected).
    consensus : DataFrame
        One row per treatment (``activity_by`` columns), same features.
    config : AnalysisParams or mapping, optional
        The ``analysis`` configuration section (a mapping may give any subset of its keys).

    Returns
    -------
    AnalysisResult
    """
    params = _as_params(config)
    by = _activity_keys(profiles, params)
    compound = by[0]
    dose = DOSE if DOSE in consensus.columns and DOSE in profiles.columns else None
    in_profiles = set(feature_columns(profiles))
    feats = [c for c in feature_columns(consensus) if c in in_profiles]
    activity = phenotypic_activity(
        profiles,
        group_by=by,
        negcon=params.negcon_role,
        negcon_same_plate=params.negcon_same_plate,
        distance=params.distance,
        q_threshold=params.q_threshold,
        fdr=params.fdr,
        null_size=params.null_size,
        seed=params.seed,
        features=feats,
        pvalue=params.pvalue,
    )
    cons, active = _active_treatments(consensus, activity, by, params.negcon_role)
    consistency, nsc = _moa_tables(cons, active, compound, feats, params)
    clusters = _cluster_table(cons, active, compound, dose, feats, params)
    dr = (
        dose_response(
            activity, compound_column=compound, dose_column=dose, q_threshold=params.q_threshold
        )
        if dose is not None and dose in by
        else pd.DataFrame({compound: pd.Series(dtype="object")})
    )
    summary = {
        "activity_by": by,
        "n_treatments": int(len(activity)),
        "n_active": int(activity["active"].sum()),
        "n_active_compounds": int(dr["compound_active"].sum())
        if "compound_active" in dr.columns
        else None,
        "nsc_accuracy": nsc.accuracy,
        "nscb_accuracy": nsc.accuracy_nscb,
        "n_clusters": _n_clusters(clusters["Metadata_Cluster"].to_numpy()),
        "n_features": len(feats),
    }
    return AnalysisResult(activity, consistency, clusters, dr, summary)


def _n_clusters(labels: np.ndarray) -> int:
    """Number of clusters among labels (-1 is noise)."""
    return int(len(np.unique(labels[labels >= 0])))


def _activity_keys(profiles: pd.DataFrame, params: AnalysisParams) -> list[str]:
    """The columns defining a treatment: ``activity_by``, less the dose when most treatments
    have a single well (e.g. a dose series without replicates: a compound's replicates are
    then its wells at all doses)."""
    by = list(params.activity_by)
    neg = params.negcon_role
    _require(profiles, by + [ROLE], "profiles")
    trt = profiles[(profiles[ROLE] != neg) & (profiles[ROLE] != "empty")]
    if len(by) > 1 and len(trt) and (trt.groupby(by, dropna=False).size() >= 2).mean() < 0.5:
        logger.warning(
            "most treatments %s have a single well; measuring activity per %s", by, by[:-1]
        )
        by = by[:-1]
    return by


def _active_treatments(
    consensus: pd.DataFrame, activity: pd.DataFrame, by: list[str], negcon: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Consensus profiles other than negative controls, and whether each was called active."""
    cons = consensus.reset_index(drop=True)
    if ROLE in cons.columns:
        cons = cons[cons[ROLE] != negcon].reset_index(drop=True)
    _require(cons, by, "consensus")
    act_keys = activity[by + ["active", "q_value", "mean_average_precision"]]
    key_cons = cons[by].astype("string").fillna("<NA>")
    key_act = act_keys[by].astype("string").fillna("<NA>")
    lookup = {tuple(r): i for i, r in enumerate(key_act.itertuples(index=False))}
    idx = np.array([lookup.get(tuple(r), -1) for r in key_cons.itertuples(index=False)])
    active = np.where(idx >= 0, act_keys["active"].to_numpy()[np.maximum(idx, 0)], False)
    return cons, active.astype(bool)


def _moa_tables(
    cons: pd.DataFrame,
    active: np.ndarray,
    compound: str,
    feats: list[str],
    params: AnalysisParams,
) -> tuple[pd.DataFrame, NSCResult]:
    """MoA consistency per MoA (with its NSC accuracy) and the NSC result."""
    if not (MOA in cons.columns and cons[MOA].notna().any()):
        consistency = moa_consistency(
            cons.assign(**{MOA: pd.Series([None] * len(cons), dtype="object")}),
            compound_column=compound,
            features=feats,
        )
        consistency["nsc_accuracy"] = pd.Series(dtype="float64")
        return consistency, NSCResult(float("nan"), float("nan"), pd.DataFrame())
    moa_set = cons[active] if params.moa_active_only else cons
    consistency = moa_consistency(
        moa_set,
        compound_column=compound,
        distance=params.distance,
        q_threshold=params.q_threshold,
        null_size=params.null_size,
        seed=params.seed,
        features=feats,
    )
    nsc = nsc_accuracy(moa_set, compound_column=compound, distance=params.distance, features=feats)
    per_moa = nsc.predictions.groupby(MOA)["correct"].mean().rename("nsc_accuracy")
    if len(per_moa):
        consistency = consistency.join(per_moa, on=MOA)
    else:  # no treatment to compare (e.g. none called active)
        consistency = consistency.assign(nsc_accuracy=np.nan)
    return consistency, nsc


def _cluster_labels(
    cons: pd.DataFrame,
    emb: pd.DataFrame,
    active: np.ndarray,
    feats: list[str],
    params: AnalysisParams,
) -> np.ndarray:
    """Cluster label of each consensus profile (-1: noise or not clustered)."""
    cc = params.cluster
    space = cc.space
    sel = active if cc.active_only else np.ones(len(cons), dtype=bool)
    xs = emb.to_numpy() if space == "umap" else _features(cons, feats, "cluster")
    labels = np.full(len(cons), -1, dtype=np.int64)
    if not sel.any():
        return labels
    metric = "euclidean" if space == "umap" else params.distance
    if cc.method == "hdbscan":
        if space == "features":
            # cosine geometry for HDBSCAN: Euclidean distance between unit vectors
            norm = np.linalg.norm(xs, axis=1, keepdims=True)
            xs = xs / np.where(norm > 0, norm, 1.0)
        labels[sel] = cluster(
            xs[sel], "hdbscan", min_cluster_size=cc.min_cluster_size, min_samples=cc.min_samples
        )
    else:
        labels[sel] = cluster(
            xs[sel],
            "hierarchical",
            n_clusters=cc.n_clusters,
            distance_threshold=cc.distance_threshold,
            linkage=cc.linkage,
            metric="euclidean" if cc.linkage == "ward" else metric,
        )
    return labels


def _cluster_table(
    cons: pd.DataFrame,
    active: np.ndarray,
    compound: str,
    dose: str | None,
    feats: list[str],
    params: AnalysisParams,
) -> pd.DataFrame:
    """Metadata, activity call, UMAP coordinates, cluster and nearest neighbours per profile."""
    u = params.umap
    emb = embed_umap(
        cons,
        params.seed,
        features=feats,
        n_neighbors=u.n_neighbors,
        min_dist=u.min_dist,
        metric=u.metric,
    )
    labels = _cluster_labels(cons, emb, active, feats, params)
    clusters = cons[metadata_columns(cons)].copy()
    clusters["Metadata_Active"] = active
    clusters["UMAP_1"] = emb["UMAP_1"].to_numpy()
    clusters["UMAP_2"] = emb["UMAP_2"].to_numpy()
    clusters["Metadata_Cluster"] = labels
    nn = nearest_neighbors(
        cons,
        params.n_neighbors,
        compound_column=compound,
        dose_column=dose,
        distance=params.distance,
        features=feats,
    )
    return pd.concat([clusters, nn.reset_index(drop=True)], axis=1)


def analyze_files(
    profiles_path: str,
    consensus_path: str,
    outputs: Mapping[str, str],
    config: AnalysisParams | Mapping[str, Any] | None = None,
) -> AnalysisResult:
    """Run :func:`run_analysis` on Parquet files and write its tables with provenance.

    Parameters
    ----------
    profiles_path, consensus_path : str
        Well-level campaign profiles and consensus profiles (Parquet).
    outputs : mapping
        Paths for the keys ``activity``, ``consistency``, ``clusters`` and ``dose_response``.
    config : AnalysisParams or mapping, optional
        The ``analysis`` configuration section; recorded whole (defaults filled in) in the
        provenance of each table.
    """
    from hcsflow.io import file_checksum, make_provenance, read_table, write_table

    missing = set(OUTPUTS) - set(outputs)
    if missing:
        raise ValueError(f"analyze_files: output path(s) missing for {sorted(missing)}")
    params = _as_params(config)
    result = run_analysis(read_table(profiles_path), read_table(consensus_path), params)
    inputs = {"profiles": file_checksum(profiles_path), "consensus": file_checksum(consensus_path)}
    summary = {
        k: (None if isinstance(v, float) and not np.isfinite(v) else v)
        for k, v in result.summary.items()
    }
    for key in OUTPUTS:
        prov = make_provenance(
            f"analysis.{key}", params.to_config(), inputs, extra={"summary": summary}
        )
        write_table(getattr(result, key), outputs[key], prov)
    return result
