"""Well profiles: aggregation, normalization, feature selection, batch correction, consensus.

One operation per module, DataFrame in and DataFrame out, in the manner of pycytominer.
Columns whose name starts with ``Metadata_`` are metadata; every other numeric column is a
feature (:mod:`~hcsflow.profiling.columns`). No function modifies its input.

The operations follow pycytominer's definitions wherever a method of the same name exists, so
that a profile produced here has the same numbers as one produced by pycytominer 1.7:

* :func:`aggregate` (:mod:`~hcsflow.profiling.aggregate`) - median (or mean) of each feature
  over the cells of a well; NaN skipped. The number of cells of the well is added as the
  feature ``Image_Count_Cells``. :func:`aggregate_files` streams a plate's per-shard cell
  tables one file at a time, so memory is bounded by the largest shard. Optionally with
  per-well spread and percentiles (:mod:`~hcsflow.profiling.dispersion`) and on single cells
  projected onto components of the control cells (:mod:`~hcsflow.profiling.cellspace`:
  :func:`negcon_sample`, :func:`fit_cell_projection`).
* :func:`normalize` (:mod:`~hcsflow.profiling.normalize`) - ``mad_robustize`` and
  ``standardize``, fitted on the control wells of each plate and applied to all its wells.
* :func:`feature_select` (:mod:`~hcsflow.profiling.feature_select`) - ``variance``,
  ``frequency``, ``na``, ``outlier``, ``correlation`` and ``blocklist``, in the order given
  (:class:`FeatureSelectParams`).
* :func:`consensus` (:mod:`~hcsflow.profiling.consensus`) - median of a treatment's wells.
* :func:`correct_position` (:mod:`~hcsflow.profiling.position`) - row and column offsets of
  each plate fitted (median polish, or least squares on the controls) and subtracted.

Sphering (:func:`sphere`, ZCA fitted on negative controls) and :func:`harmony` (Korsunsky et al.
2019, Nat Methods 16:1289) follow the JUMP Cell Painting profiling recipe
(:mod:`~hcsflow.profiling.batch`). :func:`read_profiles_table`
(:mod:`~hcsflow.profiling.external`) reads profiles made elsewhere; the workflow's steps are
in :mod:`~hcsflow.profiling.stages`.
"""

from hcsflow.profiling.aggregate import (
    COUNT_FEATURE,
    PER_OBJECT_METADATA,
    aggregate,
    aggregate_files,
)
from hcsflow.profiling.batch import harmony, harmony_embedding, sphere
from hcsflow.profiling.cellspace import (
    CellProjection,
    NegconSample,
    fit_cell_projection,
    negcon_sample,
)
from hcsflow.profiling.columns import METADATA_PREFIX, feature_columns, metadata_columns
from hcsflow.profiling.consensus import consensus
from hcsflow.profiling.external import (
    DEFAULT_COLUMN_CANDIDATES,
    DEFAULT_ROLE_VALUES,
    REQUIRED_PROFILE_COLUMNS,
    read_profiles_table,
)
from hcsflow.profiling.feature_select import (
    DEFAULT_BLOCKLIST,
    DEFAULT_OPERATIONS,
    FeatureSelectParams,
    feature_select,
    feature_select_excluded,
)
from hcsflow.profiling.normalize import normalize
from hcsflow.profiling.position import correct_position
from hcsflow.profiling.stages import campaign_profiles, normalize_plates, plate_profiles

__all__ = [
    "COUNT_FEATURE",
    "DEFAULT_BLOCKLIST",
    "DEFAULT_COLUMN_CANDIDATES",
    "DEFAULT_OPERATIONS",
    "DEFAULT_ROLE_VALUES",
    "METADATA_PREFIX",
    "PER_OBJECT_METADATA",
    "REQUIRED_PROFILE_COLUMNS",
    "CellProjection",
    "FeatureSelectParams",
    "NegconSample",
    "aggregate",
    "aggregate_files",
    "campaign_profiles",
    "consensus",
    "correct_position",
    "feature_columns",
    "feature_select",
    "feature_select_excluded",
    "fit_cell_projection",
    "harmony",
    "harmony_embedding",
    "metadata_columns",
    "negcon_sample",
    "normalize",
    "normalize_plates",
    "plate_profiles",
    "read_profiles_table",
    "sphere",
]
