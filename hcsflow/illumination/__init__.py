"""Flat-field and dark-field estimation and correction.

A fluorescence image is modelled as ``raw = signal * flatfield + darkfield``: the flat-field is
the multiplicative shading of the optics (vignetting, uneven illumination; mean 1), the
dark-field the additive camera offset and stray light (raw intensity units). Both are smooth
surfaces estimated per plate (or batch) and channel from many fields, and every image is then
corrected in memory as ``(raw - darkfield) / flatfield``.

Methods
-------
``basic``
    Our implementation of the BaSiC image-formation model (Peng et al. 2017, Nat Commun
    8:14836), ``Y_n(x) = b_n S(x) + D(x) + E_n(x)``: on the stack downsampled to a working grid,
    a low-rank part (per-field baseline ``b_n`` times the flat-field ``S``, plus the dark-field
    ``D``) and a sparse part ``E`` (the specimen's bright objects), solved by alternating
    robust fits (iteratively reweighted least squares with Tukey biweights) with ``S`` and ``D``
    smooth (cosine series up to ``max_frequency`` cycles per field; with the default
    ``smoothing="adaptive"`` each coefficient is shrunk by how well the fields determine it, so
    the smoothness follows the data), ``mean(S) = 1`` and ``D >= 0``. The dark level comes from
    the fields' own variation (a field's shading contrast grows with its brightness above it);
    the dark-field's spatial pattern from the camera's noise law (shot noise grows with the
    light, the offset adds none) or, without noise statistics, from the variation of the
    baselines ``b_n`` (BaSiC's identification). The pattern is kept in proportion to its split-half reliability; when nothing determines it
    (baselines that do not vary, no noise statistics) the dark-field is a constant, and the
    case is recorded (:attr:`IlluminationResult.details`). The fields centred on their mean,
    ``(b_n - mean b) S(x)``, carry the shading free of the dark-field, and the photon noise's
    skewness (its third cumulant, ``g^2`` times the signal above the dark-field, untouched by
    the read noise) gives the level itself: these and the contrast implied by the dark level
    are combined by their variances, and the dark level is moved to match.
``mean_smooth``
    CellProfiler-style (CorrectIlluminationCalculate): a robust per-pixel mean of the fields
    (each field scaled by its median; the brightest and darkest 25% of the fields at each pixel
    trimmed), smoothed by the same low-frequency projection. No dark-field (zeros).
``none``
    Flat-field of ones and dark-field of zeros.

Field screening
---------------
Before estimation, fields that would bias the estimate are left out (:func:`screen_fields`):

* **blank**: the field's mean rises above its own floor (minimum of the field binned to
  the working grid) by less than ``blank_fraction`` (default 5%) of the median of that
  quantity over the stack -- a frame with no specimen or illumination signal (shutter closed,
  failed acquisition, empty camera frame);
* **saturated**: more than ``saturated_fraction`` (default 0.5%) of its pixels are at the
  saturation level (the integer type's maximum, or ``saturation_value``), or at the stack's
  maximum value when that value is clipped in as many pixels (12-bit cameras in 16-bit files);
* **out of focus**: its focus score -- the variance of the Laplacian of the 2x-binned field
  divided by that of the field binned a further 4x -- is below ``focus_fraction`` (default 0.2)
  of the stack's median. The ratio compares fine with coarse detail, so it does not depend on
  brightness or cell density, and a blurred field (fine detail gone, coarse detail kept) scores low.

If fewer than ``min_fields`` fields remain, a :class:`IlluminationWarning` is issued and the
``fallback`` method is used instead (``mean_smooth`` on the usable fields, or ``none``).

Modules
-------
:mod:`~hcsflow.illumination.screening` (downsampling, field screening),
:mod:`~hcsflow.illumination.surfaces` (cosine series, shrunk means),
:mod:`~hcsflow.illumination.darkfield` (dark level, dark-field pattern, centred contrast),
:mod:`~hcsflow.illumination.basic` (the ``basic`` and ``mean_smooth`` fits),
:mod:`~hcsflow.illumination.estimation` (:func:`fit`, :func:`estimate`, :func:`correct`),
:mod:`~hcsflow.illumination.files` (npz files, log line, plot),
:mod:`~hcsflow.illumination.manifest` (sampling a manifest, corrected images). The names
below (``__all__``) are the public API.
"""

from hcsflow.illumination.basic import DARK_TOLERANCE
from hcsflow.illumination.estimation import (
    FALLBACKS,
    METHODS,
    SMOOTHINGS,
    IlluminationResult,
    IlluminationWarning,
    correct,
    estimate,
    estimate_from_files,
    fit,
    read_dark_frame,
)
from hcsflow.illumination.files import dark_note, load, load_meta, plot, save, summarize
from hcsflow.illumination.manifest import estimate_from_manifest, sample_fields, write_corrected
from hcsflow.illumination.screening import FieldStats, ScreeningParams, downsample, screen_fields
from hcsflow.illumination.surfaces import GROUPS, smooth_surface

__all__ = [
    "DARK_TOLERANCE",
    "FALLBACKS",
    "GROUPS",
    "METHODS",
    "SMOOTHINGS",
    "FieldStats",
    "IlluminationResult",
    "IlluminationWarning",
    "ScreeningParams",
    "correct",
    "dark_note",
    "downsample",
    "estimate",
    "estimate_from_files",
    "estimate_from_manifest",
    "fit",
    "load",
    "load_meta",
    "plot",
    "read_dark_frame",
    "sample_fields",
    "save",
    "screen_fields",
    "smooth_surface",
    "summarize",
    "write_corrected",
]
