"""A projection of single cells learned on negative-control cells, applied before aggregation.

Well medians of a few thousand correlated features weigh each biological process by how many
features happen to measure it. Projecting single cells onto axes learned from the control cells
of the campaign first, then aggregating, puts each cell in a space where the controls' own
variation is decorrelated: principal components whitened on control cells (``pca``), or a
factor analysis of control cells (``fa``, as in Ljosa et al. 2013, J Biomol Screen 18:1321,
where factors of single cells gave the best MoA retrieval on BBBC021).

The steps, each a function here and a job of the workflow:

1. Per plate (:func:`negcon_sample`): the plate's control cells give a robust centre and scale
   of every feature (median and 1.4826 MAD), which put that plate's cells in control units
   (this removes plate-to-plate shifts at the level of cells), and a seeded sample of those
   cells, standardized.
2. Per campaign (:func:`fit_cell_projection`): PCA or factor analysis on the pooled samples of
   every plate, so that one set of axes serves every plate.
3. Per plate (:func:`project_columns`): every cell standardized with its plate's centre and
   scale and projected, before :func:`hcsflow.profiling.aggregate_files` aggregates the
   components per well.

Standardized values are clipped to ``±clip`` and missing values set to 0 (the control median),
so that a few extreme or unmeasurable cells do not steer the axes.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hcsflow.profiling.columns import arrow_float_column, parquet_feature_columns
from hcsflow.profiling.feature_select import DEFAULT_BLOCKLIST

#: Scale of a normal distribution's MAD (1.4826 MAD estimates its standard deviation).
MAD_SCALE = 1.4826

_T = TypeVar("_T")

#: Prefix of the projected features' names: ``Cells_Projection_PCA_001``, ...
PROJECTION_PREFIX = "Cells_Projection"


@dataclass(frozen=True)
class NegconSample:
    """A plate's control cells in control units, and the units.

    Attributes
    ----------
    plate : str
    features : tuple of str, length n_features
    center : ndarray of shape (n_features,), float64
        Median of each feature over the plate's control cells.
    scale : ndarray of shape (n_features,), float64
        1.4826 MAD of each feature (the standard deviation where the MAD is 0; ``inf`` where
        that is 0 too or no control cell has a value, which maps the feature to 0).
    sample : ndarray of shape (n_sampled, n_features), float32
        Standardized control cells (:func:`standardize`), a seeded sample.
    n_controls : int
        Control cells on the plate (before sampling).
    """

    plate: str
    features: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    sample: np.ndarray
    n_controls: int

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as ``.npz`` (atomically: a temporary file renamed into place)."""
        _save_npz(path, self)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NegconSample:
        """Read what :meth:`save` wrote."""
        return _load_npz(cls, path)


@dataclass(frozen=True)
class CellProjection:
    """Linear map of standardized cells to components: ``(z - mean) @ components.T``.

    Attributes
    ----------
    method : {"pca", "fa"}
    features : tuple of str, length n_features
    mean : ndarray of shape (n_features,), float64
        Mean of the pooled standardized control samples.
    components : ndarray of shape (n_components, n_features), float64
        PCA: eigenvectors of the controls' covariance divided by the square root of their
        eigenvalue (whitened: control cells get unit variance on every component). FA: the map
        to the factors' posterior means.
    explained : ndarray of shape (n_components,), float64
        Fraction of the controls' total variance along each component (PCA), or each factor's
        share of the common variance (FA).
    n_cells : int
        Control cells the projection was fitted on.
    """

    method: str
    features: tuple[str, ...]
    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray
    n_cells: int

    @property
    def names(self) -> list[str]:
        """Feature names of the components, e.g. ``Cells_Projection_PCA_001``."""
        tag = self.method.upper()
        return [f"{PROJECTION_PREFIX}_{tag}_{i + 1:03d}" for i in range(len(self.components))]

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Components of standardized cells.

        Parameters
        ----------
        z : ndarray of shape (n_cells, n_features)

        Returns
        -------
        ndarray of shape (n_cells, n_components), float64
        """
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.components.T

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as ``.npz`` (atomically)."""
        _save_npz(path, self)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CellProjection:
        """Read what :meth:`save` wrote."""
        return _load_npz(cls, path)


def _save_npz(path: str | os.PathLike[str], obj: NegconSample | CellProjection) -> None:
    """Every field of ``obj`` as one array of an ``.npz``, written to a temporary file that is
    then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    arrays = {f.name: np.asarray(getattr(obj, f.name)) for f in fields(obj)}
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _load_npz(cls: type[_T], path: str | os.PathLike[str]) -> _T:
    """An object of the dataclass ``cls`` from what :func:`_save_npz` wrote: its ``str``,
    ``int`` and ``tuple`` (of str) fields converted back, arrays as stored."""
    convert = {"str": str, "int": int, "tuple[str, ...]": lambda a: tuple(str(v) for v in a)}
    with np.load(path, allow_pickle=False) as z:
        values = {f.name: convert.get(str(f.type), np.asarray)(z[f.name]) for f in fields(cls)}
    return cls(**values)


# ----------------------------------------------------------------------------------------------
# per plate: control units and a sample of control cells


def robust_units(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and scale (1.4826 MAD; standard deviation where that is 0) of each column.

    Parameters
    ----------
    x : ndarray of shape (n_cells, n_features)
        NaN values are skipped.

    Returns
    -------
    center, scale : ndarray of shape (n_features,), float64
        ``scale`` is ``inf`` where the column is constant or empty (its standardized values are
        then 0) and ``center`` is 0 where the column is empty.
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        center = np.nanmedian(x, axis=0)
        scale = MAD_SCALE * np.nanmedian(np.abs(x - center), axis=0)
        std = np.nanstd(x, axis=0)
    scale = np.where(scale > 0, scale, std)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, np.inf)
    center = np.where(np.isfinite(center), center, 0.0)
    return center, scale


def standardize(
    x: np.ndarray, center: np.ndarray, scale: np.ndarray, clip: float = 10.0
) -> np.ndarray:
    """Cells in control units: ``(x - center) / scale``, clipped to ±clip, NaN set to 0.

    Parameters
    ----------
    x : ndarray of shape (n_cells, n_features)
    center, scale : ndarray of shape (n_features,)
    clip : float

    Returns
    -------
    ndarray of shape (n_cells, n_features), float32
    """
    z = (np.asarray(x, dtype=np.float64) - center) / scale
    z = np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip)
    return np.clip(z, -clip, clip).astype(np.float32)


def _feature_names(
    schema: pa.Schema, exclude: Sequence[str], patterns: Sequence[re.Pattern[str]]
) -> list[str]:
    """The schema's feature columns, less ``exclude`` and names matching a pattern."""
    return [
        f
        for f in parquet_feature_columns(schema)
        if f not in exclude and not any(p.fullmatch(f) for p in patterns)
    ]


def _role_column(control_role: str) -> list[str]:
    """The columns that find the control cells: none when every cell is one (``"all"``)."""
    return [] if control_role == "all" else ["Metadata_Role"]


def _check_schema(
    path: str | os.PathLike[str], schema: pa.Schema, control_role: str, qc_columns: Sequence[str]
) -> None:
    """Raise ``ValueError`` naming ``path`` and the config key when a per-cell table lacks
    ``Metadata_Role`` (unless ``control_role`` is ``"all"``) or a QC column."""
    if control_role != "all" and "Metadata_Role" not in schema.names:
        raise ValueError(
            f"{path}: no Metadata_Role column, so the control cells (config "
            f"profiles.control_role {control_role!r}) cannot be found"
        )
    for c in qc_columns:
        if c not in schema.names:
            raise ValueError(
                f"{path}: QC column {c!r} (config profiles.qc_columns) not in the cell table"
            )


def _control_rows(table: pa.Table, control_role: str, qc_columns: Sequence[str]) -> np.ndarray:
    """Indices of the unflagged control cells of a table (every cell for ``"all"``); the
    table holds the columns :func:`_check_schema` requires."""
    if control_role == "all":
        keep = pa.array(np.ones(table.num_rows, dtype=bool))
    else:
        keep = pc.fill_null(pc.equal(table.column("Metadata_Role"), control_role), False)
    for c in qc_columns:
        flagged = pc.fill_null(pc.cast(table.column(c), pa.bool_()), False)
        keep = pc.and_(keep, pc.invert(flagged))
    return np.flatnonzero(keep.to_numpy(zero_copy_only=False))


def negcon_sample(
    paths: Sequence[str | os.PathLike[str]],
    plate: str,
    control_role: str = "negcon",
    max_cells: int = 5000,
    seed: int = 0,
    qc_columns: Sequence[str] = (),
    clip: float = 10.0,
    blocklist: Sequence[str] = DEFAULT_BLOCKLIST,
) -> NegconSample:
    """A plate's control units and a seeded sample of its control cells, standardized.

    The centre and scale are computed on the sampled cells (``max_cells`` of them at most, drawn
    without replacement with a generator seeded by ``seed`` and the plate's name), read one
    file at a time.

    Parameters
    ----------
    paths : sequence of path
        The plate's per-cell Parquet tables (shards), with ``Metadata_Role``.
    plate : str
        Plate name (part of the sample's seed; recorded).
    control_role : str
        ``Metadata_Role`` of the control wells, or ``"all"`` for every cell of the plate (as
        ``profiles.control_role: all`` fits the normalization on every well).
    max_cells : int
        Largest sample.
    seed : int
    qc_columns : sequence of str
        Boolean per-cell columns; flagged cells are left out.
    clip : float
        Bound of the standardized values.
    blocklist : sequence of str
        Regular expressions matched against whole feature names: features left out of the
        projection (positions, object numbers; by default the feature selection's blocklist).

    Returns
    -------
    NegconSample

    Raises
    ------
    ValueError
        When the plate has no control cell, or the files differ in their features.
    """
    if not paths:
        raise ValueError(f"plate {plate}: no per-cell tables given")
    controls, features = [], None
    patterns = [re.compile(p) for p in blocklist]
    for path in paths:
        schema = pq.read_schema(path)
        _check_schema(path, schema, control_role, qc_columns)
        names = _feature_names(schema, qc_columns, patterns)
        if features is None:
            features = names
        elif names != features:
            raise ValueError(f"per-cell table {path} has different feature columns than {paths[0]}")
        roles = pq.read_table(path, columns=[*_role_column(control_role), *qc_columns])
        controls.append(_control_rows(roles, control_role, qc_columns))
    total = int(sum(len(rows) for rows in controls))
    if total == 0:
        raise ValueError(
            f"plate {plate}: no cell of a well with Metadata_Role {control_role!r} "
            "(config profiles.control_role) to learn the cell projection from"
        )
    rng = np.random.default_rng([seed, zlib.crc32(plate.encode())])
    chosen = np.sort(rng.choice(total, size=min(max_cells, total), replace=False))
    parts, offset = [], 0
    for path, rows in zip(paths, controls, strict=True):
        take = chosen[(chosen >= offset) & (chosen < offset + len(rows))] - offset
        offset += len(rows)
        if len(take) == 0:
            continue
        sub = pq.read_table(path, columns=features).take(pa.array(rows[take]))
        parts.append(_to_matrix(sub, features))
    x = np.concatenate(parts)
    center, scale = robust_units(x)
    return NegconSample(
        plate=plate,
        features=tuple(features),
        center=center,
        scale=scale,
        sample=standardize(x, center, scale, clip),
        n_controls=total,
    )


def _to_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """(n_rows, n_features) float64 of an Arrow table's numeric columns (NaN for nulls)."""
    out = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, f in enumerate(features):
        out[:, j] = arrow_float_column(table.column(f))
    return out


# ----------------------------------------------------------------------------------------------
# per campaign: the projection


def fit_cell_projection(
    samples: Sequence[NegconSample],
    method: str = "pca",
    n_components: int = 50,
    max_cells: int = 100_000,
    seed: int = 0,
) -> CellProjection:
    """PCA (whitened) or factor analysis of the pooled control samples of every plate.

    Parameters
    ----------
    samples : sequence of NegconSample
        One per plate, all with the same features.
    method : {"pca", "fa"}
    n_components : int
        Components kept (at most the number of features and of cells).
    max_cells : int
        Factor analysis is fitted on at most this many pooled cells (a seeded subsample);
        PCA uses every sampled cell.
    seed : int

    Returns
    -------
    CellProjection
        Each component's sign is fixed so that its largest loading is positive (the fit is
        the same on every run and machine).
    """
    if method not in ("pca", "fa"):
        raise ValueError(f"cell projection method must be 'pca' or 'fa', got {method!r}")
    if not samples:
        raise ValueError("fit_cell_projection: no control samples given")
    features = samples[0].features
    for s in samples[1:]:
        if s.features != features:
            diff = sorted(set(s.features) ^ set(features))[:5]
            raise ValueError(
                f"plate {s.plate} has different features than plate {samples[0].plate}: {diff}"
            )
    n_cells = sum(len(s.sample) for s in samples)
    k = int(min(n_components, len(features), n_cells - 1))
    if k < 1:
        raise ValueError("fit_cell_projection: too few control cells or features")
    if method == "pca":
        mean, cov = _pooled_moments(samples)
        components, explained = _whitened_pca(cov, k)
    else:
        z = _pooled_subsample(samples, max_cells, seed)
        mean = z.mean(axis=0)
        components, explained = _factor_map(z, k, seed)
    return CellProjection(method, features, mean, components, explained, n_cells)


def _pooled_moments(samples: Sequence[NegconSample]) -> tuple[np.ndarray, np.ndarray]:
    """Mean (n_features,) and covariance (n_features, n_features) of the pooled samples,
    accumulated one plate at a time (the pool is never held in memory)."""
    p = len(samples[0].features)
    total, sum_x, sum_xx = 0, np.zeros(p), np.zeros((p, p))
    for s in samples:
        x = s.sample.astype(np.float64)
        total += len(x)
        sum_x += x.sum(axis=0)
        sum_xx += x.T @ x
    mean = sum_x / total
    cov = (sum_xx - total * np.outer(mean, mean)) / max(total - 1, 1)
    return mean, (cov + cov.T) / 2


def _pooled_subsample(samples: Sequence[NegconSample], max_cells: int, seed: int) -> np.ndarray:
    """At most ``max_cells`` rows (n, n_features) of the pooled samples, a seeded choice."""
    sizes = np.array([len(s.sample) for s in samples])
    total = int(sizes.sum())
    if total <= max_cells:
        return np.concatenate([s.sample for s in samples]).astype(np.float64)
    chosen = np.sort(np.random.default_rng(seed).choice(total, max_cells, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for s, lo, hi in zip(samples, starts[:-1], starts[1:], strict=True):
        rows = chosen[(chosen >= lo) & (chosen < hi)] - lo
        parts.append(s.sample[rows].astype(np.float64))
    return np.concatenate(parts)


def _fix_signs(v: np.ndarray) -> np.ndarray:
    """Rows of v (n_components, n_features) with the largest |loading| made positive."""
    idx = np.argmax(np.abs(v), axis=1)
    signs = np.sign(v[np.arange(len(v)), idx])
    return v * np.where(signs == 0, 1.0, signs)[:, None]


def _whitened_pca(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenvectors (k, n_features) of ``cov`` scaled by 1 / sqrt(eigenvalue), and
    each one's fraction of the total variance."""
    eigval, eigvec = np.linalg.eigh(cov)
    top = np.argsort(eigval)[::-1][:k]
    val = np.maximum(eigval[top], 0.0)
    vec = _fix_signs(eigvec[:, top].T)
    # components with (numerically) no control variance are left at zero, not blown up
    tol = max(val[0], 1e-300) * 1e-10
    inv = np.where(val > tol, 1.0 / np.sqrt(np.where(val > tol, val, 1.0)), 0.0)
    return vec * inv[:, None], val / max(np.trace(cov), 1e-300)


def _factor_map(z: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Map (k, n_features) of cells z (n, n_features) to the posterior means of k factors,
    and each factor's share of the common variance."""
    from sklearn.decomposition import FactorAnalysis

    fa = FactorAnalysis(n_components=k, svd_method="randomized", random_state=seed)
    fa.fit(z)
    w = fa.components_  # (k, p)
    # posterior mean of the factors: (I + W Psi^-1 W^T)^-1 W Psi^-1 (z - mean)
    w_psi = w / fa.noise_variance_
    cov_f = np.linalg.inv(np.eye(k) + w_psi @ w.T)
    m = cov_f @ w_psi
    load = np.sum(w**2, axis=1)
    signs = np.sign(w[np.arange(k), np.argmax(np.abs(w), axis=1)])
    signs = np.where(signs == 0, 1.0, signs)
    return m * signs[:, None], load / max(load.sum(), 1e-300)


# ----------------------------------------------------------------------------------------------
# per plate: projecting the cells


def project_columns(
    columns: Sequence[np.ndarray],
    features: Sequence[str],
    units: NegconSample,
    projection: CellProjection,
    clip: float = 10.0,
) -> np.ndarray:
    """Project cells given as one array per feature.

    Parameters
    ----------
    columns : sequence of ndarray of shape (n_cells,)
        The cells' features, in the order of ``features``.
    features : sequence of str
        Names of ``columns``: every feature of the projection must be among them (others are
        ignored).
    units : NegconSample
        The plate's centre and scale, over the projection's features.
    projection : CellProjection
    clip : float

    Returns
    -------
    ndarray of shape (n_cells, n_components), float64
    """
    index = {f: i for i, f in enumerate(features)}
    missing = [f for f in projection.features if f not in index]
    if missing or units.features != projection.features:
        missing = missing or sorted(set(units.features) ^ set(projection.features))
        raise ValueError(
            f"the cell projection was fitted on features that this plate's cells lack "
            f"({len(missing)}, e.g. {missing[:5]}): refit it (rule cell_projection)"
        )
    x = np.stack([np.asarray(columns[index[f]], dtype=np.float64) for f in projection.features], 1)
    return projection.transform(standardize(x, units.center, units.scale, clip))
