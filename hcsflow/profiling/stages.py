"""The workflow's profile-level steps: plate profiles, their normalization, and the campaign.

Each is a composition of the package's operations configured by a section of the workflow
configuration (``profiles``, ``campaign``); the workflow scripts call these.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hcsflow.profiling.aggregate import aggregate_files
from hcsflow.profiling.batch import harmony, sphere
from hcsflow.profiling.cellspace import CellProjection, NegconSample, project_columns
from hcsflow.profiling.columns import BATCH, PLATE, ROLE, WELL, feature_columns
from hcsflow.profiling.consensus import consensus
from hcsflow.profiling.feature_select import FeatureSelectParams, feature_select_excluded
from hcsflow.profiling.normalize import normalize
from hcsflow.profiling.position import correct_position


def plate_profiles(
    cell_tables: Sequence[str | os.PathLike[str]],
    aggregation: str = "median",
    normalization: str = "mad_robustize",
    control_role: str = "negcon",
    mad_epsilon: float = 1e-18,
    qc_columns: Sequence[str] = (),
    threads: int = 1,
    dispersion: Sequence[str] = (),
    projection: tuple[NegconSample, CellProjection] | None = None,
    clip: float = 10.0,
) -> pd.DataFrame:
    """Well profiles of one plate from its per-shard cell tables (config section ``profiles``).

    Aggregates the cells of each well (:func:`aggregate_files`, one file at a time), then
    normalizes against the plate's ``control_role`` wells (:func:`normalize`; ``"all"`` fits
    on every well).

    Parameters
    ----------
    dispersion : sequence of str
        Per-well statistics added beside the aggregation (:mod:`hcsflow.profiling.dispersion`).
    projection : (NegconSample, CellProjection), optional
        The plate's control units and the campaign's cell projection: cells are projected
        (:func:`hcsflow.profiling.cellspace.project_columns`, values clipped to ``±clip``)
        and the components aggregated in place of the features.

    Returns
    -------
    DataFrame with one row per well, sorted by well.
    """
    transform = None
    if projection is not None:
        units, proj = projection

        def transform(columns, names):  # type: ignore[no-untyped-def]
            comp = project_columns(columns, names, units, proj, clip)
            return list(comp.T), proj.names

    prof = aggregate_files(
        cell_tables,
        method=aggregation,
        qc_columns=qc_columns,
        threads=threads,
        dispersion=dispersion,
        cell_transform=transform,
    )
    return normalize_plates(prof, normalization, control_role, mad_epsilon)


def normalize_plates(
    profiles: pd.DataFrame,
    normalization: str = "mad_robustize",
    control_role: str = "negcon",
    mad_epsilon: float = 1e-18,
) -> pd.DataFrame:
    """:func:`normalize` within each plate against the wells whose role is ``control_role``."""
    control = None if control_role == "all" else {"Metadata_Role": control_role}
    return normalize(
        profiles, method=normalization, control=control, by="Metadata_Plate", epsilon=mad_epsilon
    )


def campaign_profiles(
    profiles: pd.DataFrame, campaign: Mapping[str, Any], control_role: str = "negcon"
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Optional plate-position correction, feature selection, optional sphering and Harmony,
    and consensus over a campaign.

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
        Normalized well profiles of all plates.
    campaign : mapping
        The validated config section ``campaign`` (``position``, ``feature_select``,
        ``sphering``, ``harmony``, ``consensus``).
    control_role : str
        Role of the wells the sphering (and a ``negcon`` position fit) is fitted on.

    Returns
    -------
    profiles : DataFrame
        Well profiles after the campaign steps, sorted by plate and well.
    consensus : DataFrame
        One row per compound x dose.
    steps : dict
        What was done (for provenance): the steps in order and the excluded features.
    """
    steps: list[str] = []
    n_in = len(feature_columns(profiles))
    pos = campaign.get("position", {"enabled": False})
    position_info = None
    if pos["enabled"]:
        profiles, position_info = correct_position(
            profiles,
            feature_columns(profiles),
            fit_on=pos["fit_on"],
            control=None if control_role == "all" else {ROLE: control_role},
            shrinkage=pos["shrinkage"],
        )
        steps.append(f"position(fit_on={pos['fit_on']})")
    out, excluded = _select(profiles, campaign["feature_select"], steps)
    sph = campaign["sphering"]
    har = campaign["harmony"]
    if sph["enabled"]:
        control = None if control_role == "all" else {ROLE: control_role}
        shrink = float(sph.get("shrinkage", 0.0))
        out = sphere(
            out, control=control, method=sph["method"], epsilon=sph["epsilon"], shrinkage=shrink
        )
        steps.append(f"sphere({sph['method']}, epsilon={sph['epsilon']}, shrinkage={shrink})")
    if har["enabled"]:
        out = harmony(
            out,
            batch_col=BATCH,
            n_components=har["n_components"],
            theta=har["theta"],
            sigma=har["sigma"],
            lamb=har["lambda"],
            n_clusters=har["n_clusters"],
            max_iter=har["max_iter"],
            seed=har["seed"],
        )
        steps.append(f"harmony(batch={BATCH}, n_components={har['n_components']})")
    out = out.sort_values([PLATE, WELL], kind="stable").reset_index(drop=True)
    cons = consensus(out, method=campaign["consensus"])
    steps.append(f"consensus({campaign['consensus']} by Metadata_Compound, Metadata_Dose)")
    info = {
        "steps": steps,
        "n_features_in": n_in,
        "n_features_out": len(feature_columns(out)),
        "excluded_features": excluded,
    }
    if position_info is not None:
        info["position"] = position_info
    return out, cons, info


def _select(
    profiles: pd.DataFrame, fs: Mapping[str, Any], steps: list[str]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Feature selection (config ``campaign.feature_select``), then the incomplete features.

    Sphering, Harmony and the distances of the analysis need complete features: those still
    missing in some well (at most ``na_cutoff`` of the wells when ``na`` ran) are dropped too.
    The steps taken are appended to ``steps``.
    """
    excluded = feature_select_excluded(profiles, FeatureSelectParams.from_config(fs))
    drop = {f for fs_ in excluded.values() for f in fs_}
    out = profiles[[c for c in profiles.columns if c not in drop]]
    if not feature_columns(out):
        raise ValueError(
            "feature selection (config campaign.feature_select) removed every feature: "
            + ", ".join(f"{op} {len(v)}" for op, v in excluded.items())
        )
    steps.append("feature_select(" + ",".join(fs["operations"]) + ")")
    feats = feature_columns(out)
    missing = [f for f, m in zip(feats, out[feats].isna().any().to_numpy(), strict=True) if m]
    if missing:
        excluded["incomplete"] = missing
        out = out.drop(columns=missing)
        steps.append(f"drop_incomplete({len(missing)})")
        if not feature_columns(out):
            raise ValueError("campaign: every selected feature has missing values in some well")
    return out, excluded
