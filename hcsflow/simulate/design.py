"""The plate design: well names, the default plate map, compounds' dose responses."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcsflow import wells as _wells
from hcsflow.simulate.params import INACTIVE_MOA, MOA_PROFILES


def well_names(n_wells: int) -> list[str]:
    """Well names of a 96- or 384-well plate in row-major order (``A01``, ``A02``, ...)."""
    if n_wells not in (96, 384):
        raise ValueError(f"n_wells must be 96 or 384, got {n_wells}")
    return _wells.well_names(n_wells)


def default_platemap(n_wells: int = 96, seed: int = 0) -> pd.DataFrame:
    """The default screen layout: DMSO, a positive control and compounds of seven MoAs.

    96 wells: 7 MoAs x 3 compounds + 3 inactive compounds, 3 doses (0.1, 1, 10 uM), one well
    each (72), 20 DMSO and 4 positive-control wells. 384 wells: 7 x 4 + 4 inactive compounds,
    5 doses (0.1-10 uM), two replicate wells each (320), 48 DMSO, 16 positive-control wells.
    Wells are shuffled with ``seed`` (controls included, so some sit on the edge).

    Parameters
    ----------
    n_wells : {96, 384}
    seed : int
        Seed of the well shuffle.

    Returns
    -------
    DataFrame
        Columns ``well``, ``compound``, ``dose_um``, ``role``, ``moa``, ``target``, one row per
        well in row-major order.
    """
    wells = well_names(n_wells)
    if n_wells == 96:
        per_moa, n_inactive, doses, reps, n_neg, n_pos = 3, 3, (0.1, 1.0, 10.0), 1, 20, 4
    else:
        per_moa, n_inactive, doses, reps, n_neg, n_pos = 4, 4, (0.1, 0.3, 1.0, 3.0, 10.0), 2, 48, 16
    rows: list[dict[str, Any]] = []
    for moa, prof in MOA_PROFILES.items():
        for j in range(per_moa):
            rows += _wells_of(f"{prof['code']}-{j + 1}", doses, reps, "trt", moa, prof["target"])
    for j in range(n_inactive):
        rows += _wells_of(f"INACT-{j + 1}", doses, reps, "trt", INACTIVE_MOA, "none")
    rows += _wells_of("POSCON-TOPO", (10.0,), n_pos, "poscon", "topoisomerase inhibitor", "TOP2A")
    rows += _wells_of("DMSO", (0.0,), n_neg, "negcon", "control", "none")
    rows += _wells_of("", (0.0,), n_wells - len(rows), "empty", "", "")
    assert len(rows) == n_wells, (len(rows), n_wells)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A7E])).permutation(n_wells)
    df = pd.DataFrame([rows[i] for i in order])
    df.insert(0, "well", wells)
    return df


def _wells_of(
    compound: str, doses: Sequence[float], reps: int, role: str, moa: str, target: str
) -> list[dict[str, Any]]:
    """Plate-map rows of one compound: ``reps`` wells at each dose of ``doses``, in order."""
    return [
        {"compound": compound, "dose_um": d, "role": role, "moa": moa, "target": target}
        for d in doses
        for _ in range(reps)
    ]


def compound_parameters(compound: str, moa: str) -> dict[str, Any]:
    """Dose-response parameters of a compound, derived from its name only.

    Plates simulated with different seeds but one plate map therefore share every compound's
    EC50, Hill slope and maximal effect and are true replicates.
    """
    rng = np.random.default_rng(np.random.SeedSequence([zlib.crc32(compound.encode()), 0xEC50]))
    ec50 = float(np.exp(rng.uniform(np.log(0.15), np.log(4.0))))
    hill = float(rng.uniform(0.8, 2.5))
    max_effect = float(rng.uniform(0.6, 1.0))
    if compound.startswith("POSCON"):
        ec50, hill, max_effect = 0.3, 1.5, 1.0
    active = moa in MOA_PROFILES
    if not active:
        max_effect = 0.0
    return {
        "compound": compound,
        "moa": moa,
        "ec50_um": round(ec50, 4),
        "hill": round(hill, 3),
        "max_effect": round(max_effect, 3),
        "phenotype": json.dumps(MOA_PROFILES[moa]["phenotype"], sort_keys=True) if active else "{}",
        "features": MOA_PROFILES[moa]["features"] if active else "",
    }


def effect_fraction(dose_um: float, ec50_um: float, hill: float, max_effect: float) -> float:
    """Hill response ``max_effect * d^h / (d^h + EC50^h)`` (0 at dose 0)."""
    if dose_um <= 0 or max_effect == 0:
        return 0.0
    return float(max_effect * dose_um**hill / (dose_um**hill + ec50_um**hill))


def _validate_platemap(pm: pd.DataFrame, n_wells: int) -> pd.DataFrame:
    """The plate map checked as any plate map is, plus: every well is on the plate."""
    from hcsflow.platemap import validate_platemap

    pm = validate_platemap(pm, "simulated plate map")
    bad = sorted(set(pm["well"]) - set(well_names(n_wells)))
    if bad:
        raise ValueError(
            f"simulated plate map: wells {bad[:5]} are not wells of a {n_wells}-well plate"
        )
    return pm
