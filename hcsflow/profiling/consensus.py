"""Consensus profiles: one profile per treatment from its replicate wells (pycytominer ``consensus``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hcsflow.profiling.aggregate import _constant_metadata, _group_codes, _group_reduce
from hcsflow.profiling.columns import COMPOUND, DOSE, require_columns, resolve_features


def consensus(
    profiles: pd.DataFrame,
    by: Sequence[str] = (COMPOUND, DOSE),
    method: str = "median",
    features: Sequence[str] | None = None,
    replicate_column: str = "Metadata_Replicates",
) -> pd.DataFrame:
    """One consensus profile per treatment: the median (or mean) of its replicate wells.

    Parameters
    ----------
    profiles : DataFrame of shape (n_wells, n_columns)
    by : sequence of str
        Columns identifying a treatment (compound and dose by default).
    method : {"median", "mean"}
    features : sequence of str, optional
    replicate_column : str
        Metadata column that receives the number of wells combined.

    Returns
    -------
    DataFrame of shape (n_treatments, ...)
        ``by``, the metadata constant within every treatment (role, MoA, target, ...), the
        replicate count and the consensus features, sorted by ``by``.
    """
    if method not in ("median", "mean"):
        raise ValueError(f"consensus method must be 'median' or 'mean', got {method!r}")
    by = list(by)
    require_columns(profiles, by, "consensus")
    feats = resolve_features(profiles, features, "consensus")
    feats = [f for f in feats if f not in by]
    codes, keys = _group_codes(profiles, by)
    values, counts = _group_reduce(profiles[feats].to_numpy(), codes, len(keys), method)
    meta = _constant_metadata(profiles, codes, len(keys), exclude=by + [replicate_column])
    return pd.concat(
        [
            keys.reset_index(drop=True),
            meta,
            pd.DataFrame({replicate_column: counts.astype(np.int64)}),
            pd.DataFrame(values, columns=feats),
        ],
        axis=1,
    )
