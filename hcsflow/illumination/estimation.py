"""Estimating and applying flat-field and dark-field: :func:`fit`, :func:`estimate`,
:func:`correct` (see :mod:`hcsflow.illumination` for the methods)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hcsflow.illumination.basic import _fit_basic, _fit_mean_smooth
from hcsflow.illumination.screening import ScreeningParams, downsample, screen_fields
from hcsflow.illumination.surfaces import _evaluate

METHODS = ("basic", "mean_smooth", "none")


FALLBACKS = ("mean_smooth", "none")


SMOOTHINGS = ("adaptive", "fixed")


class IlluminationWarning(UserWarning):
    """Issued when an estimate falls back to a simpler method (too few usable fields)."""


@dataclass
class IlluminationResult:
    """Result of :func:`fit`.

    Attributes
    ----------
    flatfield : ndarray of shape (H, W), float32
        Multiplicative shading, mean 1.
    darkfield : ndarray of shape (H, W), float32
        Additive offset in raw intensity units.
    method : str
        The method actually used (differs from the requested one after a fallback).
    n_fields : int
        Number of fields given.
    used : ndarray of shape (N,), bool
        Which fields entered the estimate.
    excluded : dict of int to str
        Index of each left-out field -> reason (``blank``, ``saturated``, ``out_of_focus``).
    details : dict
        Record of the ``basic`` fit: ``darkfield_model`` (``"none"``, ``"constant"``: the
        baselines did not determine a spatial pattern, or ``"surface"``), ``dark_level`` (mean
        of the dark-field), ``baseline_cv`` (coefficient of variation of the fields'
        baselines), ``dark_pattern_shrinkage`` (0: pattern dropped, 1: kept in full),
        ``baseline_median``, ``smoothing`` (``"adaptive"`` or ``"fixed"``) and, with
        dark-field, ``contrast_factor`` (the factor by which the centred fields scaled the
        flat-field's contrast, 1: none) and ``contrast_weight`` (the weight of the centred
        fields' contrast) and ``flatfield_uniform`` (True when the fields showed no shading
        beyond their noise and the flat-field is a constant); empty for the other methods.
    dropped : list of dict
        Sampled fields left out because their file could not be read or had another shape
        (:func:`estimate_from_manifest` with ``on_bad_image="drop"``): ``File``,
        ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, ``Channel``, ``Reason``.
    """

    flatfield: np.ndarray
    darkfield: np.ndarray
    method: str
    n_fields: int
    used: np.ndarray
    excluded: dict[int, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """A JSON-serialisable summary (method, counts, reasons of exclusion, dropped files)."""
        reasons: dict[str, int] = {}
        for r in self.excluded.values():
            reasons[r] = reasons.get(r, 0) + 1
        out = {
            "method": self.method,
            "n_fields": int(self.n_fields),
            "n_used": int(self.used.sum()),
            "excluded": dict(sorted(reasons.items())),
            "fit": dict(sorted(self.details.items())),
        }
        if self.dropped:
            out["dropped"] = list(self.dropped)
        return out


def fit(
    stack: np.ndarray | Iterable[np.ndarray],
    method: str = "basic",
    *,
    darkfield: bool = True,
    working_size: int = 64,
    max_frequency: float = 4.0,
    min_fields: int = 10,
    fallback: str = "none",
    screen: bool = True,
    screening: ScreeningParams = ScreeningParams(),
    names: Sequence[str] | None = None,
    dark_pattern: bool = True,
    smoothing: str = "adaptive",
    centred: bool = True,
    dark: str | float | np.ndarray | os.PathLike[str] = "auto",
) -> IlluminationResult:
    """Estimate flat-field and dark-field from many fields, with screening and fallback.

    Parameters
    ----------
    stack : ndarray of shape (N, H, W), or iterable of ndarray of shape (H, W)
        The fields of one channel (raw intensities, any real dtype). An iterable (e.g. a
        generator reading files) is consumed in chunks, so memory stays bounded.
    method : {"basic", "mean_smooth", "none"}
        Estimator (see the module documentation).
    darkfield : bool
        Estimate a dark-field (``basic`` only); otherwise the dark-field is zero.
        ``darkfield=False`` is ``dark="none"``.
    working_size : int
        Longest side of the grid the fields are downsampled to before fitting.
    max_frequency : float
        Highest spatial frequency kept in the surfaces, in cycles per field (radial cutoff of
        the cosine series); lower is smoother.
    min_fields : int
        Fewest usable fields for ``method``; below it, warn and use ``fallback``.
    fallback : {"mean_smooth", "none"}
        Method used when too few fields are usable (``mean_smooth`` needs at least one).
    screen : bool
        Leave blank, saturated and out-of-focus fields out (see :func:`screen_fields`).
    screening : ScreeningParams
        Screening thresholds.
    names : sequence of str, optional
        Name (file path) of each field, used in error and warning messages.
    dark_pattern : bool
        With ``method="basic"`` and ``darkfield``: estimate the dark-field's spatial pattern
        (from the variation of the fields' baselines and from the noise law) and weigh in the
        level given by the skewness of the photon noise (both need raw camera data);
        otherwise the dark-field is a constant offset from the contrast alone.
    smoothing : {"adaptive", "fixed"}
        ``basic``: ``"adaptive"`` keeps each cosine coefficient of the flat-field and of the
        dark-field's pattern in proportion to how well the fields determine it (delete-a-group
        jackknife over the fields, James-Stein shrinkage), so the smoothness follows the data
        up to ``max_frequency``; ``"fixed"`` keeps every coefficient up to ``max_frequency``.
    centred : bool
        ``basic`` with ``darkfield``: combine the flat-field's contrast given by the fields
        centred on their mean (free of the dark-field) with the one implied by the dark level
        and, with ``dark_pattern``, the one implied by the photon noise's skewness, by their
        variances, and move the dark level to match; ``False`` keeps the dark level of the
        contrast regression alone.
    dark : "auto", "none", float, ndarray of shape (H, W) or path
        The dark-field. ``"auto"`` (``basic``): estimated, and subtracted only when the fields
        determine its level (see :func:`_fit_basic`, step 6; otherwise the flat-field is fitted
        without dark-field and ``details`` says why); ``"none"``: zero; a number (the camera
        offset, raw units), an array or the path of a file (a dark frame of the fields' shape,
        :func:`read_dark_frame`): used as given, by ``basic`` and ``mean_smooth`` alike, and
        returned as the dark-field.

    Returns
    -------
    IlluminationResult
        ``flatfield`` and ``darkfield`` of shape (H, W), float32, and a record of the fields used.

    Raises
    ------
    ValueError
        Unknown method or fallback, an empty stack, a field that is not 2-D, whose shape
        differs from the others (naming the file when ``names`` is given) or that holds NaN;
        a ``dark`` that is not ``"auto"``, ``"none"``, a finite number >= 0 or an array of
        the fields' shape, or a given ``dark`` with ``darkfield=False``.
    """
    if method not in METHODS:
        raise ValueError(f"illumination method {method!r} is not one of {METHODS}")
    if fallback not in FALLBACKS:
        raise ValueError(f"illumination fallback {fallback!r} is not one of {FALLBACKS}")
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"illumination smoothing {smoothing!r} is not one of {SMOOTHINGS}")
    if isinstance(stack, np.ndarray) and stack.ndim != 3:
        raise ValueError(f"stack has shape {stack.shape}; expected (N, H, W)")
    given = _check_dark(dark)
    if given is not None and not darkfield:
        raise ValueError("a given dark-field (dark=number or frame) contradicts darkfield=False")
    auto = darkfield and not (isinstance(dark, str) and dark == "none")
    small, stats, shape = downsample(
        stack,
        working_size=working_size,
        saturation_value=screening.saturation_value,
        names=names,
        # the noise's skewness serves only the dark level that basic estimates
        cumulants=method == "basic" and auto and given is None and dark_pattern and centred,
    )
    n = small.shape[0]
    excluded = screen_fields(stats, screening) if screen else {}
    used = np.ones(n, dtype=bool)
    used[list(excluded)] = False
    chosen = _choose_method(method, fallback, min_fields, n, excluded)
    dark_full: np.ndarray | None = None
    d_small: np.ndarray | None = None
    if given is not None:
        dark_full, d_small = _given_dark(given, dark, shape, small.shape[1:])
    if chosen == "none":
        return IlluminationResult(
            np.ones(shape, np.float32), np.zeros(shape, np.float32), "none", n, used, excluded
        )
    s_coef, d_coef, details = _fit_surfaces(
        chosen,
        small[used],
        None if stats.noise is None else stats.noise[used],
        None if stats.cumulants is None else stats.cumulants[used],
        d_small,
        darkfield=auto,
        max_frequency=max_frequency,
        dark_pattern=dark_pattern,
        adaptive=smoothing == "adaptive",
        centred=centred,
    )
    if given is not None:
        details["dark"] = "frame" if given.ndim == 2 else "number"
    elif chosen == "basic":
        details["dark"] = "auto" if auto else "none"
    flat = _evaluate(s_coef, small.shape[1:], shape)
    flat = flat / flat.mean()
    # a flat-field must stay positive; clip pathological fits far below the mean
    flat = np.maximum(flat, 0.05).astype(np.float32)
    if dark_full is not None:
        dark_out = np.array(dark_full, dtype=np.float32)
    else:
        dark_out = _evaluate(d_coef, small.shape[1:], shape).astype(np.float32)
    return IlluminationResult(flat, dark_out, chosen, n, used, excluded, details)


def _fit_surfaces(
    chosen: str,
    sub: np.ndarray,
    noise: np.ndarray | None,
    cumulants: np.ndarray | None,
    d_small: np.ndarray | None,
    *,
    darkfield: bool,
    max_frequency: float,
    dark_pattern: bool,
    adaptive: bool,
    centred: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The cosine coefficients of flat-field and dark-field by ``chosen`` (``basic`` or
    ``mean_smooth``) on the working grid, and the record of the fit.

    Parameters
    ----------
    chosen : {"basic", "mean_smooth"}
        The method.
    sub : ndarray of shape (N, h, w)
        The downsampled fields used.
    noise : ndarray of shape (N, h, w), optional
        Their local noise variance (:class:`FieldStats` ``noise``).
    cumulants : ndarray of shape (N, 4, h, w), optional
        Their noise cumulants (:class:`FieldStats` ``cumulants``).
    d_small : ndarray of shape (h, w), optional
        A given dark-field on the working grid.
    darkfield, max_frequency, dark_pattern, adaptive, centred
        As in :func:`fit` (``adaptive``: ``smoothing="adaptive"``; ``darkfield``: a dark-field
        is estimated).

    Returns
    -------
    s_coef, d_coef : ndarray of shape (h, w)
        Coefficients of the flat-field (mean 1) and of the dark-field (raw units).
    details : dict
        The record of the ``basic`` fit (empty for ``mean_smooth``).
    """
    if chosen != "basic":
        s_coef, d_coef = _fit_mean_smooth(
            sub if d_small is None else sub - d_small.astype(np.float32),
            max_frequency=max_frequency,
        )
        return s_coef, d_coef, {}
    s_coef, d_coef, details = _fit_basic(
        sub,
        darkfield=darkfield,
        dark_given=d_small,
        max_frequency=max_frequency,
        noise=noise,
        dark_pattern=dark_pattern,
        adaptive=adaptive,
        centred=centred,
        cumulants=cumulants,
    )
    # the adaptive smoothing returns a constant when the fields show no shading
    ac = np.abs(s_coef.ravel()[1:])
    details["flatfield_uniform"] = bool(ac.max(initial=0.0) <= 1e-9 * abs(s_coef[0, 0]))
    return s_coef, d_coef, details


def _choose_method(
    method: str, fallback: str, min_fields: int, n: int, excluded: Mapping[int, str]
) -> str:
    """The method :func:`fit` uses: ``method``, or ``fallback`` (with a warning) when fewer
    than ``min_fields`` of the ``n`` fields are usable."""
    n_used = n - len(excluded)
    if method == "none" or n_used >= min_fields:
        return method
    chosen = fallback if (fallback == "none" or n_used >= 1) else "none"
    warnings.warn(
        f"only {n_used} of {n} fields are usable for the {method!r} illumination estimate "
        f"(min_fields={min_fields}; excluded: {_count(excluded)}); using {chosen!r} instead",
        IlluminationWarning,
        stacklevel=3,
    )
    return chosen


def _given_dark(
    given: np.ndarray,
    dark: str | float | np.ndarray | os.PathLike[str],
    shape: tuple[int, int],
    small_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """A given dark-field (number or frame) at full size (float32) and on the working grid."""
    if given.ndim == 2 and given.shape != tuple(shape):
        what = f"dark frame {dark}" if isinstance(dark, (str, os.PathLike)) else "the dark frame"
        raise ValueError(f"{what} has shape {given.shape}, but the fields have {tuple(shape)}")
    dark_full = np.broadcast_to(given, shape).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(dark_full))[None, None]
    d_small = F.adaptive_avg_pool2d(t, small_shape)[0, 0].double().numpy()
    return dark_full, d_small


def read_dark_frame(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a dark frame (camera offset image): a TIFF or PNG image, or a ``.npy`` array.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    ndarray of shape (H, W), float64
        Raw units.

    Raises
    ------
    ValueError
        Naming the file: missing, unreadable, not 2-D, not finite or negative.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dark frame {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read dark frame {path}: {exc}") from exc
    else:
        from hcsflow.io import read_image

        arr = read_image(path)
    arr = np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"dark frame {path} has shape {arr.shape}; expected a 2-D image (H, W)")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"dark frame {path} holds negative, NaN or infinite values")
    return arr


def _check_dark(dark: str | float | np.ndarray | os.PathLike[str]) -> np.ndarray | None:
    """Validate :func:`fit`'s ``dark``: ``None`` for ``"auto"``/``"none"``, else the array.

    A string other than ``"auto"``/``"none"`` (or a path) names a dark frame file.
    """
    if isinstance(dark, str) and dark in ("auto", "none"):
        return None
    if isinstance(dark, (str, os.PathLike)):
        return read_dark_frame(dark)
    if isinstance(dark, bool):
        raise ValueError(f"dark {dark!r} is not 'auto', 'none', a number or a dark frame")
    arr = np.asarray(dark, dtype=np.float64)
    if arr.ndim not in (0, 2):
        raise ValueError(f"the dark frame has shape {arr.shape}; expected a number or (H, W)")
    if not np.isfinite(arr).all():
        raise ValueError("the dark frame holds NaN or infinite values")
    if (arr < 0).any():
        raise ValueError(f"the dark level must be >= 0, got minimum {float(arr.min())}")
    return arr


def estimate(
    stack: np.ndarray | Iterable[np.ndarray],
    method: str = "basic",
    *,
    darkfield: bool = True,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the flat-field and dark-field of a stack of fields.

    Parameters
    ----------
    stack : ndarray of shape (N, H, W), or iterable of ndarray of shape (H, W)
        The fields of one channel, raw intensities.
    method : {"basic", "mean_smooth", "none"}
        Estimator (see the module documentation).
    darkfield : bool
        Estimate a dark-field (``basic``); otherwise it is zero.
    **kwargs
        Further options of :func:`fit` (``working_size``, ``max_frequency``, ``min_fields``,
        ``fallback``, ``screen``, ``screening``, ``names``, ...).

    Returns
    -------
    flatfield : ndarray of shape (H, W), float32
        Mean 1.
    darkfield : ndarray of shape (H, W), float32
        Raw intensity units.
    """
    res = fit(stack, method, darkfield=darkfield, **kwargs)
    return res.flatfield, res.darkfield


def estimate_from_files(
    paths: Sequence[str | os.PathLike[str]],
    method: str = "basic",
    *,
    read: Callable[[str | os.PathLike[str]], np.ndarray] | None = None,
    **kwargs: Any,
) -> IlluminationResult:
    """Estimate from image files, reading them one chunk at a time.

    Parameters
    ----------
    paths : sequence of path
        One image file per field (single channel).
    method : str
        As in :func:`fit`.
    read : callable, optional
        Reads one file into an ndarray of shape (H, W); default :func:`hcsflow.io.read_image`.
    **kwargs
        Options of :func:`fit`.
    """
    if read is None:
        from hcsflow.io import read_image as read
    names = [str(p) for p in paths]
    return fit((read(p) for p in paths), method, names=names, **kwargs)


def correct(
    image: np.ndarray,
    flatfield: np.ndarray,
    darkfield: np.ndarray | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Correct an image: ``(image - darkfield) / flatfield`` in float32.

    Parameters
    ----------
    image : ndarray of shape (..., H, W)
        Raw image(s), any real dtype; not modified.
    flatfield : ndarray of shape (H, W)
        Multiplicative shading (positive).
    darkfield : ndarray of shape (H, W), optional
        Additive offset in raw units; ``None`` means zero.
    out : ndarray of shape (..., H, W), float32, optional
        Where to write the result.

    Returns
    -------
    ndarray of shape (..., H, W), float32
    """
    image = np.asarray(image)
    if image.shape[-2:] != np.shape(flatfield) or (
        darkfield is not None and np.shape(darkfield) != np.shape(flatfield)
    ):
        raise ValueError(
            f"image of shape {image.shape} does not match flat-field {np.shape(flatfield)}"
            + ("" if darkfield is None else f" / dark-field {np.shape(darkfield)}")
        )
    flat = np.asarray(flatfield, dtype=np.float32)
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    if darkfield is None:
        np.copyto(out, image, casting="unsafe")
    else:
        np.subtract(image, np.asarray(darkfield, dtype=np.float32), out=out, dtype=np.float32)
    np.divide(out, flat, out=out)
    return out


def _count(excluded: Mapping[int, str]) -> str:
    reasons: dict[str, int] = {}
    for r in excluded.values():
        reasons[r] = reasons.get(r, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(reasons.items())) or "none"
