"""Per-field image quality, named as CellProfiler's MeasureImageQuality writes it.

For every channel of a raw field:

- ``ImageQuality_FocusScore_<ch>``: normalised variance, ``var(I) / mean(I)`` (Groen et al.
  1985; CellProfiler's focus score), high for sharp fields and low for blurred ones.
- ``ImageQuality_PowerLogLogSlope_<ch>``: slope of log power against log spatial frequency of
  the radially averaged power spectrum (Bray et al. 2012); more negative = blurrier.
- ``ImageQuality_PercentMaximal_<ch>``: percentage of pixels at the image's maximum value
  (saturation, when that maximum is the camera's ceiling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Measurements per channel, in column order.
QUALITY_MEASURES: tuple[str, ...] = ("FocusScore", "PowerLogLogSlope", "PercentMaximal")


def _loglog_slope(img: np.ndarray) -> float:
    """Slope of the radially averaged log power spectrum against log frequency."""
    h, w = img.shape
    if min(h, w) < 8:
        return float("nan")
    a = img - img.mean()
    power = np.abs(np.fft.rfft2(a)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    nbins = min(h, w) // 2
    idx = np.minimum((radius * 2 * nbins).astype(np.int64), nbins)
    sums = np.bincount(idx.ravel(), weights=power.ravel(), minlength=nbins + 1)
    cnt = np.bincount(idx.ravel(), minlength=nbins + 1)
    k = np.arange(1, nbins)  # skip DC and the corner beyond Nyquist
    mean_power = sums[k] / np.maximum(cnt[k], 1)
    ok = mean_power > 0
    if ok.sum() < 2:
        return float("nan")
    x = np.log(k[ok] / (2.0 * nbins))
    y = np.log(mean_power[ok])
    return float(np.polyfit(x, y, 1)[0])


def field_quality(raw: np.ndarray, channel_names: Sequence[str]) -> dict[str, float]:
    """Image-quality measurements of one raw field.

    Parameters
    ----------
    raw : ndarray of shape (C, H, W)
        The field as stored (before illumination correction).
    channel_names : sequence of str
        C channel names.

    Returns
    -------
    dict of str to float
        ``ImageQuality_<measure>_<channel>`` for every channel and :data:`QUALITY_MEASURES`.
    """
    if raw.ndim != 3 or raw.shape[0] != len(channel_names):
        raise ValueError(
            f"raw field of shape {raw.shape} does not match {len(channel_names)} channels"
        )
    out: dict[str, float] = {}
    for img, ch in zip(raw, channel_names, strict=True):
        a = img.astype(np.float64)
        mean = float(a.mean()) if a.size else float("nan")
        focus = float(a.var() / mean) if mean > 0 else 0.0
        at_max = 100.0 * np.count_nonzero(img == img.max()) / img.size if img.size else 0.0
        out[f"ImageQuality_FocusScore_{ch}"] = focus
        out[f"ImageQuality_PowerLogLogSlope_{ch}"] = _loglog_slope(a)
        out[f"ImageQuality_PercentMaximal_{ch}"] = float(at_max)
    return out
