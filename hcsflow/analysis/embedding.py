"""The landscape of consensus profiles: UMAP, clustering and nearest neighbours.

UMAP (umap-learn, seeded, single-threaded so that it is deterministic) and clustering (HDBSCAN
or hierarchical) describe the landscape of consensus profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcsflow.analysis._common import _features, _group_codes, similarity_matrix
from hcsflow.profiling.columns import COMPOUND, DOSE


def embed_umap(
    consensus: pd.DataFrame,
    seed: int = 0,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Two-dimensional UMAP embedding of profiles (deterministic for a given seed).

    umap-learn runs single-threaded with ``random_state=seed``, which makes it reproducible.
    ``n_neighbors`` is capped at ``n - 1``. With fewer than 5 profiles UMAP is not defined;
    the first two principal components are returned instead.

    Parameters
    ----------
    consensus : DataFrame of shape (n, n_columns)
    seed : int
    n_neighbors : int
    min_dist : float
    metric : str
        Any metric umap-learn accepts (``cosine``, ``euclidean``, ``correlation``, ...).
    features : sequence of str, optional

    Returns
    -------
    DataFrame of shape (n, 2)
        Columns ``UMAP_1``, ``UMAP_2``, indexed like ``consensus``.
    """
    x = _features(consensus, features, "embed_umap")
    n = len(x)
    if n < 5:
        xc = x - x.mean(axis=0)
        if n > 1 and np.any(xc):
            u, s, _ = np.linalg.svd(xc, full_matrices=False)
            emb = (u * s)[:, :2]
            # sign convention: largest-magnitude entry of each component positive
            signs = np.sign(emb[np.argmax(np.abs(emb), axis=0), np.arange(emb.shape[1])])
            emb = emb * np.where(signs == 0, 1, signs)
        else:
            emb = np.zeros((n, 0))
        emb = np.pad(emb, ((0, 0), (0, 2 - emb.shape[1])))
    else:
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=int(min(n_neighbors, n - 1)),
            min_dist=min_dist,
            metric=metric,
            random_state=seed,
            n_jobs=1,
            transform_seed=seed,
        )
        emb = reducer.fit_transform(x)
    return pd.DataFrame(
        np.asarray(emb, dtype=np.float64), index=consensus.index, columns=["UMAP_1", "UMAP_2"]
    )


def cluster(
    x: np.ndarray,
    method: str = "hdbscan",
    *,
    min_cluster_size: int = 3,
    min_samples: int | None = None,
    n_clusters: int | None = None,
    distance_threshold: float = 0.5,
    linkage: str = "average",
    metric: str = "cosine",
) -> np.ndarray:
    """Cluster the rows of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Profiles or an embedding of them.
    method : {"hdbscan", "hierarchical"}
        HDBSCAN (scikit-learn; Euclidean on ``x``, rows labelled -1 are noise) or
        agglomerative clustering with ``linkage`` on ``metric`` distance, cut at
        ``n_clusters`` or, when that is None, at ``distance_threshold``.
    min_cluster_size, min_samples : int
        HDBSCAN parameters.
    n_clusters : int or None
    distance_threshold : float
    linkage : {"average", "complete", "single", "ward"}
    metric : str
        Distance for hierarchical clustering (``ward`` needs ``euclidean``).

    Returns
    -------
    ndarray of shape (n,), int64
        Cluster labels, renumbered 0, 1, ... in order of first appearance (noise -1).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        if n < max(2, min_cluster_size):
            labels = np.full(n, -1)
        else:
            labels = HDBSCAN(
                min_cluster_size=max(2, min_cluster_size),
                min_samples=min_samples,
                copy=True,
            ).fit_predict(x)
    elif method == "hierarchical":
        from sklearn.cluster import AgglomerativeClustering

        if n < 2:
            labels = np.zeros(n, dtype=np.int64)
        else:
            if linkage == "ward" and metric != "euclidean":
                raise ValueError("hierarchical clustering with ward linkage needs metric euclidean")
            k = None if n_clusters is None else min(int(n_clusters), n)
            labels = AgglomerativeClustering(
                n_clusters=k,
                distance_threshold=None if k is not None else distance_threshold,
                metric=metric,
                linkage=linkage,
            ).fit_predict(x)
    else:
        raise ValueError(f"cluster method must be 'hdbscan' or 'hierarchical', got {method!r}")
    return _renumber(np.asarray(labels))


def _renumber(labels: np.ndarray) -> np.ndarray:
    out = np.full(len(labels), -1, dtype=np.int64)
    mapping: dict[int, int] = {}
    for i, lab in enumerate(labels):
        if lab < 0:
            continue
        if lab not in mapping:
            mapping[int(lab)] = len(mapping)
        out[i] = mapping[int(lab)]
    return out


def nearest_neighbors(
    consensus: pd.DataFrame,
    k: int = 3,
    *,
    compound_column: str = COMPOUND,
    dose_column: str | None = DOSE,
    distance: str = "cosine",
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The ``k`` most similar profiles of *other* compounds for each profile.

    Returns
    -------
    DataFrame of shape (n, 3 * k)
        Indexed like ``consensus``: ``Metadata_Neighbor_{i}`` (compound),
        ``Metadata_Neighbor_{i}_Dose`` and ``Metadata_Neighbor_{i}_Similarity`` for
        i = 1..k (missing neighbours are null).
    """
    x = _features(consensus, features, "nearest_neighbors")
    sim = similarity_matrix(x, distance)
    comp = _group_codes(consensus, [compound_column])
    sim = np.where(comp[:, None] == comp[None, :], -np.inf, sim)
    order = np.argsort(-sim, axis=1, kind="stable")
    names = consensus[compound_column].to_numpy()
    doses = consensus[dose_column].to_numpy() if dose_column in consensus.columns else None
    out: dict[str, Any] = {}
    rows = np.arange(len(x))
    for i in range(k):
        if i < len(x):
            j = order[:, i]
            s = sim[rows, j]
            ok = np.isfinite(s)
        else:
            j = np.zeros(len(x), dtype=int)
            s = np.full(len(x), np.nan)
            ok = np.zeros(len(x), dtype=bool)
        out[f"Metadata_Neighbor_{i + 1}"] = pd.Series(
            np.where(ok, names[j] if len(x) else [], None), dtype="object"
        )
        if doses is not None:
            out[f"Metadata_Neighbor_{i + 1}_Dose"] = np.where(
                ok, doses[j].astype(np.float64) if len(x) else [], np.nan
            )
        out[f"Metadata_Neighbor_{i + 1}_Similarity"] = np.where(ok, s, np.nan)
    return pd.DataFrame(out).set_axis(consensus.index)
