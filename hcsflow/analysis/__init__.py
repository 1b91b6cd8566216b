"""Drug-response analysis of well and consensus profiles.

Phenotypic activity and MoA consistency are mean average precision (mAP) retrieval scores
computed with copairs (Kalinin et al. 2025, Nat Commun 16:5181): for each query profile, other
profiles are ranked by similarity and the average precision of retrieving the "positive" ones
(replicates of the same treatment, or compounds of the same MoA) among "negative" ones (negative
control wells, or compounds of other MoAs) is computed; the mean over a group's profiles is
compared with a null distribution to give a p-value, and p-values are FDR-corrected (q-values).

* :mod:`~hcsflow.analysis.activity` - :func:`phenotypic_activity`, :func:`adjacent_wells`;
  the mAP nulls are in :mod:`~hcsflow.analysis.mapstats` (:func:`permutation_map_pvalues`).
* :mod:`~hcsflow.analysis.consistency` - :func:`moa_consistency` and the BBBC021
  not-same-compound 1-NN MoA accuracy (:func:`nsc_accuracy`).
* :mod:`~hcsflow.analysis.embedding` - :func:`embed_umap`, :func:`cluster`,
  :func:`nearest_neighbors`.
* :mod:`~hcsflow.analysis.dose` - :func:`compound_activity`, :func:`dose_response`,
  :func:`simes_pvalue`.
* :mod:`~hcsflow.analysis.stage` - the workflow's stage: :class:`AnalysisParams`,
  :func:`run_analysis`, :func:`analyze_files`.

Every function takes DataFrames whose non-feature columns start with ``Metadata_``; the feature
columns are all the other numeric columns. Inputs are never modified.
"""

from hcsflow.analysis._common import DISTANCES, similarity_matrix
from hcsflow.analysis.activity import adjacent_wells, phenotypic_activity
from hcsflow.analysis.consistency import NSCResult, moa_consistency, nsc_accuracy
from hcsflow.analysis.dose import compound_activity, dose_response, simes_pvalue
from hcsflow.analysis.embedding import cluster, embed_umap, nearest_neighbors
from hcsflow.analysis.mapstats import permutation_map_pvalues
from hcsflow.analysis.stage import (
    AnalysisParams,
    AnalysisResult,
    ClusterParams,
    UmapParams,
    analyze_files,
    run_analysis,
)
from hcsflow.profiling.columns import (
    BATCH,
    COMPOUND,
    DOSE,
    MOA,
    NEGCON,
    PLATE,
    ROLE,
    WELL,
    feature_columns,
)

__all__ = [
    "BATCH",
    "COMPOUND",
    "DISTANCES",
    "DOSE",
    "MOA",
    "NEGCON",
    "PLATE",
    "ROLE",
    "WELL",
    "AnalysisParams",
    "AnalysisResult",
    "ClusterParams",
    "NSCResult",
    "UmapParams",
    "adjacent_wells",
    "analyze_files",
    "cluster",
    "compound_activity",
    "dose_response",
    "embed_umap",
    "feature_columns",
    "moa_consistency",
    "nearest_neighbors",
    "nsc_accuracy",
    "permutation_map_pvalues",
    "phenotypic_activity",
    "run_analysis",
    "similarity_matrix",
    "simes_pvalue",
]
