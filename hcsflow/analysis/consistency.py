"""MoA consistency (mAP of retrieving compounds of the same MoA) and NSC 1-NN MoA accuracy.

The not-same-compound (NSC) 1-nearest-neighbour MoA accuracy follows the BBBC021 protocol
(Ljosa et al. 2013; Ando et al. 2017): every compound x dose profile takes the MoA of its most
similar profile among those of *other* compounds (and, for NSCB, other batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hcsflow.analysis._common import (
    _bh,
    _check_distance,
    _features,
    _group_codes,
    _require,
    similarity_matrix,
)
from hcsflow.analysis.mapstats import _map_with_pvalues
from hcsflow.profiling.columns import BATCH, COMPOUND, MOA, NEGCON, ROLE


def moa_consistency(
    profiles: pd.DataFrame,
    *,
    moa_column: str = MOA,
    compound_column: str = COMPOUND,
    role_column: str = ROLE,
    negcon: str = NEGCON,
    distance: str = "cosine",
    q_threshold: float = 0.05,
    null_size: int = 10000,
    seed: int = 0,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """MoA consistency: mAP of retrieving other compounds of the same MoA.

    Each profile (consensus per compound x dose, or wells) ranks every profile of other
    compounds; those sharing its MoA are positives, those of other MoAs negatives. Profiles of
    the same compound are neither (so replicates do not inflate the score). Negative controls
    and profiles without MoA are left out. Multi-label MoAs (``a|b``) count as one label.

    Parameters
    ----------
    profiles : DataFrame of shape (n, n_columns)
    moa_column, compound_column, role_column, negcon : str
    distance : {"cosine", "correlation", "euclidean"}
    q_threshold : float
    null_size, seed : int
    features : sequence of str, optional

    Returns
    -------
    DataFrame
        One row per MoA, sorted: ``Metadata_MoA`` (named ``moa_column``), ``n_profiles``,
        ``n_compounds``, ``mean_average_precision``, ``p_value``, ``q_value`` (BH over MoAs),
        ``consistent`` (q below ``q_threshold``). MoAs with a single compound have NaN scores.
    """
    _check_distance(distance)
    _require(profiles, [moa_column, compound_column], "moa_consistency")
    df = profiles[profiles[moa_column].notna()]
    if role_column in df.columns:
        df = df[df[role_column] != negcon]
    df = df.reset_index(drop=True)
    cols = [moa_column, "n_profiles", "n_compounds", "mean_average_precision", "p_value"]
    if df.empty:
        out = pd.DataFrame({c: [] for c in cols})
    else:
        x = _features(df, features, "moa_consistency")
        meta = pd.DataFrame(
            {
                "moa": _group_codes(df, [moa_column]),
                "compound": _group_codes(df, [compound_column]),
            }
        )
        _, maps = _map_with_pvalues(
            meta,
            x,
            pos_sameby=["moa"],
            pos_diffby=["compound"],
            neg_sameby=[],
            neg_diffby=["moa", "compound"],
            group="moa",
            distance=distance,
            null_size=null_size,
            seed=seed,
        )
        small = df[[moa_column, compound_column]].copy()
        small["_moa"] = meta["moa"].to_numpy()
        g = small.groupby("_moa", sort=True)
        out = pd.DataFrame(
            {
                moa_column: g[moa_column].first(),
                "n_profiles": g.size(),
                "n_compounds": g[compound_column].nunique(),
            }
        ).join(maps.set_index("moa"), how="left")
        out = out.reset_index(drop=True)
    out["q_value"] = _bh(out["p_value"].to_numpy(dtype=np.float64))
    out["consistent"] = np.nan_to_num(out["q_value"].to_numpy(dtype=np.float64), nan=1.0) < (
        q_threshold
    )
    return out.sort_values(moa_column, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class NSCResult:
    """Not-same-compound 1-NN MoA classification.

    Attributes
    ----------
    accuracy : float
        Fraction of profiles whose nearest profile of another compound has the same MoA.
    accuracy_nscb : float
        Same, excluding also profiles of the same batch (NaN without batches).
    predictions : DataFrame
        Per profile: compound, MoA, ``predicted_moa``, ``neighbor_compound``,
        ``similarity``, ``correct`` (and ``predicted_moa_nscb``, ``correct_nscb``).
    """

    accuracy: float
    accuracy_nscb: float
    predictions: pd.DataFrame = field(repr=False)


def nsc_accuracy(
    consensus: pd.DataFrame,
    *,
    moa_column: str = MOA,
    compound_column: str = COMPOUND,
    batch_column: str | None = BATCH,
    role_column: str = ROLE,
    negcon: str = NEGCON,
    distance: str = "cosine",
    features: Sequence[str] | None = None,
) -> NSCResult:
    """Not-same-compound (NSC) 1-nearest-neighbour MoA accuracy (BBBC021 protocol).

    Every profile with a MoA shared by at least two compounds (negative controls excluded) is
    assigned the MoA of its most similar profile among those of other compounds; for the not-same-compound-or-batch
    variant (NSCB), profiles of the same batch are excluded too. Ties go to the first profile
    in table order.

    Parameters
    ----------
    consensus : DataFrame of shape (n, n_columns)
        Usually one row per compound x dose.
    moa_column, compound_column : str
    batch_column : str or None
        NSCB is computed when this column exists and holds more than one batch.
    role_column, negcon : str
    distance : {"cosine", "correlation", "euclidean"}
    features : sequence of str, optional

    Returns
    -------
    NSCResult
    """
    _check_distance(distance)
    _require(consensus, [moa_column, compound_column], "nsc_accuracy")
    df = consensus[consensus[moa_column].notna()]
    if role_column in df.columns:
        df = df[df[role_column] != negcon]
    # a profile whose MoA no other compound carries cannot be classified correctly
    n_comp = df.groupby(moa_column)[compound_column].transform("nunique")
    df = df[n_comp >= 2].reset_index(drop=True)
    pred = df[[compound_column, moa_column]].copy()
    if len(df) < 2:
        pred["predicted_moa"] = pd.Series([None] * len(df), dtype="object")
        pred["correct"] = False
        return NSCResult(float("nan"), float("nan"), pred)
    x = _features(df, features, "nsc_accuracy")
    sim = similarity_matrix(x, distance)
    comp = _group_codes(df, [compound_column])
    moa = df[moa_column].to_numpy()
    excl = comp[:, None] == comp[None, :]

    def one_nn(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.where(mask, -np.inf, sim)
        nn = np.argmax(s, axis=1)
        ok = np.isfinite(s[np.arange(len(s)), nn])
        return np.where(ok, nn, -1), np.where(ok, s[np.arange(len(s)), nn], np.nan)

    nn, s = one_nn(excl)
    has = nn >= 0
    pred["predicted_moa"] = np.where(has, moa[np.maximum(nn, 0)], None)
    pred["neighbor_compound"] = np.where(
        has, df[compound_column].to_numpy()[np.maximum(nn, 0)], None
    )
    pred["similarity"] = s
    pred["correct"] = has & (pred["predicted_moa"].to_numpy() == moa)
    acc = float(pred.loc[has, "correct"].mean()) if has.any() else float("nan")
    acc_b = float("nan")
    if batch_column is not None and batch_column in df.columns:
        batch = _group_codes(df, [batch_column])
        if len(np.unique(batch)) > 1:
            nnb, _ = one_nn(excl | (batch[:, None] == batch[None, :]))
            hb = nnb >= 0
            pred["predicted_moa_nscb"] = np.where(hb, moa[np.maximum(nnb, 0)], None)
            pred["correct_nscb"] = hb & (pred["predicted_moa_nscb"].to_numpy() == moa)
            acc_b = float(pred.loc[hb, "correct_nscb"].mean()) if hb.any() else float("nan")
    return NSCResult(acc, acc_b, pred)
