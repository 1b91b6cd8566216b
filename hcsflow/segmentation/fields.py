"""One field's QC flags, its estimated scale, and what segmenting it gives.

:func:`field_flags` and :func:`estimate_nuclear_diameter` look at a raw nuclear image before
anything else; :class:`SegmentationResult` is what :meth:`Segmenter.predict_with_qc
<hcsflow.segmentation.segmenter.Segmenter.predict_with_qc>` returns per field and
:class:`FieldMaps` what :meth:`Segmenter.maps
<hcsflow.segmentation.segmenter.Segmenter.maps>` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.segmentation.postprocess import PostStats

#: QC flags a field can carry.
FLAGS = ("blank", "saturated", "no_objects")


@dataclass
class SegmentationResult:
    """Labels and QC of one field.

    Attributes
    ----------
    nuclei, cells : ndarray of uint32, shape (H, W)
        Label images of the input's shape; cell ``k`` contains nucleus ``k``.
    stats : PostStats
        Object counts and the unmatched objects removed.
    flags : tuple of str
        QC flags among :data:`FLAGS` (empty for a normal field).
    image_mpp : float
        Pixel size used (the given one, or the estimate).
    mpp_estimated : bool
        Whether ``image_mpp`` was estimated from the image.
    timings : dict of str to float
        Seconds spent in ``network`` (normalization, rescaling, inference, blending) and
        ``postprocess`` (watershed, mapping labels back).
    """

    nuclei: np.ndarray
    cells: np.ndarray
    stats: PostStats
    flags: tuple[str, ...] = ()
    image_mpp: float = float("nan")
    mpp_estimated: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_labels(
        cls,
        nuclei: np.ndarray,
        cells: np.ndarray,
        stats: PostStats,
        flags: Sequence[str],
        image_mpp: float,
        mpp_estimated: bool,
        timings: dict[str, float],
    ) -> SegmentationResult:
        """A field's result, its flags sorted; ``no_objects`` is added to the flags of a field
        that is not ``blank`` and has no nuclei."""
        fl = list(flags)
        if stats.n_nuclei == 0 and "blank" not in fl:
            fl.append("no_objects")
        return cls(nuclei, cells, stats, tuple(sorted(fl)), image_mpp, mpp_estimated, timings)

    def qc_record(self) -> dict[str, Any]:
        """Flat record for a per-field QC table (counts named as CellProfiler's Image table)."""
        rec: dict[str, Any] = dict(self.stats.as_dict())
        rec["Count_Nuclei"] = rec.pop("n_nuclei")
        rec["Count_Cells"] = rec.pop("n_cells")
        rec["flags"] = ";".join(self.flags)
        rec["image_mpp"] = float(self.image_mpp)
        rec["mpp_estimated"] = bool(self.mpp_estimated)
        return rec


@dataclass
class FieldMaps:
    """The network's maps of one field and what post-processing needs (:meth:`Segmenter.maps`).

    Attributes
    ----------
    maps : ndarray of float32, shape (6, h, w)
        Maps at the working resolution (foreground as probabilities).
    nuclear : ndarray of float32, shape (h, w)
        The normalized nuclear input at the working resolution.
    native_nuclear : ndarray of float32, shape (H, W)
        The normalized nuclear channel at the input's resolution.
    nuclei_only : bool
        The field had no cytoplasm channel.
    shape : tuple of int
        The input's shape ``(H, W)``.
    image_mpp : float
        The input's pixel size, µm.
    """

    maps: np.ndarray
    nuclear: np.ndarray
    native_nuclear: np.ndarray
    nuclei_only: bool
    shape: tuple[int, int]
    image_mpp: float


def field_flags(nuclear: np.ndarray, saturation_fraction: float = 0.05) -> list[str]:
    """QC flags of a raw nuclear image: ``blank`` (constant) or ``saturated``.

    Parameters
    ----------
    nuclear : ndarray, shape (H, W)
    saturation_fraction : float
        Fraction of pixels at the image maximum above which the field is ``saturated``.
    """
    img = np.asarray(nuclear)
    if img.size == 0:
        return ["blank"]
    lo, hi = img.min(), img.max()
    if not hi > lo:
        return ["blank"]
    at_max = np.count_nonzero(img == hi) / img.size
    return ["saturated"] if at_max > saturation_fraction else []


def empty_labels(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, PostStats]:
    """Nuclei and cells without objects (uint32, of ``shape``) and their zero counts."""
    nuclei = np.zeros(shape, np.uint32)
    return nuclei, nuclei.copy(), PostStats()


#: Ratio of twice the median per-component maximal distance to the median equivalent-circle
#: diameter of the nuclei, measured on DSB2018 training images (0.86, 75 images) and on
#: simulated fields of random appearance (0.88, 8 fields).
GRANULOMETRY_RATIO = 0.87


def estimate_nuclear_diameter(nuclear: np.ndarray) -> float:
    """Median nuclear diameter in pixels, by granulometry of the nuclear channel.

    The image is normalized, smoothed lightly and thresholded with Otsu's method; in each
    connected component the maximum of the Euclidean distance to the background is the radius
    of the (largest) nucleus it holds, whether the component is one nucleus or a clump. Twice
    the median of these radii over components (specks under 2 pixels radius are noise),
    divided by :data:`GRANULOMETRY_RATIO`, estimates the median equivalent-circle diameter
    (to about 10 %).

    Parameters
    ----------
    nuclear : ndarray, shape (H, W)

    Returns
    -------
    float
        Diameter in pixels, ``nan`` if the image has no foreground.
    """
    from skimage.filters import threshold_otsu

    img = np.asarray(nuclear, dtype=np.float32)
    lo, hi = np.percentile(img, (1.0, 99.8))
    if not hi > lo:
        return float("nan")
    img = ndi.gaussian_filter(np.clip((img - lo) / (hi - lo), 0, 1), 1.0)
    if img.min() == img.max():
        return float("nan")
    mask = img > threshold_otsu(img)
    labels, n = ndi.label(mask)
    if n == 0:
        return float("nan")
    dist = ndi.distance_transform_edt(mask)
    radius = np.asarray(ndi.maximum(dist, labels, index=np.arange(1, n + 1)))
    radius = radius[radius >= 2.0]
    if radius.size == 0:
        return float("nan")
    return float(2.0 * np.median(radius) / GRANULOMETRY_RATIO)
