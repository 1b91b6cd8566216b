"""Accuracy of instance segmentations: object matching by intersection over union.

A predicted object and a true object *match* at threshold ``t`` when their intersection over
union (IoU) exceeds ``t``, each object being used at most once. For ``t >= 0.5`` two objects of
one label image cannot both overlap one object of the other by more than half, so the matching is
unique and is read directly from the IoU matrix; below 0.5 it is the assignment that maximises
the number of matches (Hungarian algorithm, ties broken by IoU).

All IoUs come from one contingency matrix of the two label images (``np.bincount`` over pairs of
labels), so the cost is one pass over the pixels whatever the number of objects.

Definitions (the ones used by Caicedo et al. 2019 for the 2018 Data Science Bowl and by the
Cellpose and StarDist papers):

- ``TP`` matched pairs, ``FP`` unmatched predictions, ``FN`` unmatched true objects;
- F1 at ``t``: ``2 TP / (2 TP + FP + FN)``;
- average precision (AP) at ``t``: ``TP / (TP + FP + FN)`` -- label images carry no confidence
  scores, so there is no precision-recall curve to integrate and AP reduces to this ratio;
- DSB score: AP averaged over ``t`` in 0.50, 0.55, ..., 0.95 (the competition's metric), the same
  number as the mean AP over IoU 0.5:0.95.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

#: IoU thresholds of the DSB score and of the mean AP: 0.50, 0.55, ..., 0.95.
DEFAULT_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


@dataclass(frozen=True)
class Matching:
    """Objects of a predicted and a true label image matched at one IoU threshold.

    Attributes
    ----------
    threshold : float
        The IoU threshold.
    pred_ids, true_ids : ndarray of shape (M,)
        Labels of the matched pairs (``pred_ids[i]`` matches ``true_ids[i]``).
    iou : ndarray of shape (M,)
        IoU of each matched pair.
    n_pred, n_true : int
        Number of objects in each image.
    """

    threshold: float
    pred_ids: np.ndarray
    true_ids: np.ndarray
    iou: np.ndarray
    n_pred: int
    n_true: int

    @property
    def tp(self) -> int:
        return int(self.pred_ids.size)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float(self.n_true == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0

    @property
    def ap(self) -> float:
        denom = self.tp + self.fp + self.fn
        return self.tp / denom if denom else 1.0


def _check_pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"label images differ in shape: pred {pred.shape}, true {true.shape}")
    for name, arr in (("pred", pred), ("true", true)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
            raise ValueError(f"{name} must be an integer label image, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} has negative labels")
    return pred, true


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every pair of overlapping objects of two label images.

    Parameters
    ----------
    pred, true : ndarray of int, shape (H, W) (or any shape, equal)
        Label images, 0 = background.

    Returns
    -------
    iou : ndarray of float64, shape (P, T)
        IoU between the ``P`` objects of ``pred`` and the ``T`` objects of ``true``.
    pred_ids : ndarray of shape (P,)
        Label of each row.
    true_ids : ndarray of shape (T,)
        Label of each column.
    """
    pred, true = _check_pair(pred, true)
    pred_ids, p_inv = np.unique(pred.ravel(), return_inverse=True)
    true_ids, t_inv = np.unique(true.ravel(), return_inverse=True)
    # index 0 of each is background if present; force a background slot at index 0
    if pred_ids.size == 0 or pred_ids[0] != 0:
        pred_ids = np.concatenate([[0], pred_ids])
        p_inv = p_inv + 1
    if true_ids.size == 0 or true_ids[0] != 0:
        true_ids = np.concatenate([[0], true_ids])
        t_inv = t_inv + 1
    n_p, n_t = pred_ids.size, true_ids.size
    cont = np.bincount(p_inv * n_t + t_inv, minlength=n_p * n_t).reshape(n_p, n_t)
    area_p = cont.sum(axis=1)
    area_t = cont.sum(axis=0)
    inter = cont[1:, 1:].astype(np.float64)
    union = area_p[1:, None] + area_t[None, 1:] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou, pred_ids[1:], true_ids[1:]


def _match_from_iou(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    if iou.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    if threshold >= 0.5:
        rows, cols = np.nonzero(iou > threshold)
        return rows, cols
    # maximise the number of matches above threshold; among those, the total IoU
    ok = iou > threshold
    cost = -(ok * (1.0 + iou))
    rows, cols = linear_sum_assignment(cost)
    keep = ok[rows, cols]
    return rows[keep], cols[keep]


def match(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> Matching:
    """Match the objects of ``pred`` to those of ``true`` at an IoU threshold.

    Parameters
    ----------
    pred, true : ndarray of int, shape (H, W)
        Predicted and true label images, 0 = background.
    iou : float
        A pair matches when its IoU is strictly greater than this threshold.

    Returns
    -------
    Matching
    """
    return match_many(pred, true, [iou])[0]


def match_many(pred: np.ndarray, true: np.ndarray, thresholds) -> list[Matching]:
    """:func:`match` at several thresholds, computing the IoU matrix once."""
    mat, pred_ids, true_ids = iou_matrix(pred, true)
    out = []
    for t in np.atleast_1d(np.asarray(thresholds, dtype=float)):
        if not 0.0 <= t < 1.0:
            raise ValueError(f"IoU threshold must lie in [0, 1), got {t}")
        r, c = _match_from_iou(mat, float(t))
        out.append(
            Matching(
                threshold=float(t),
                pred_ids=pred_ids[r],
                true_ids=true_ids[c],
                iou=mat[r, c] if r.size else np.zeros(0),
                n_pred=int(pred_ids.size),
                n_true=int(true_ids.size),
            )
        )
    return out


def f1_at(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> float:
    """F1 score ``2 TP / (2 TP + FP + FN)`` of object matching at an IoU threshold.

    Parameters
    ----------
    pred, true : ndarray of int, shape (H, W)
        Predicted and true label images, 0 = background.
    iou : float
        IoU threshold (a match needs IoU strictly above it).

    Returns
    -------
    float
        1.0 when both images are empty.
    """
    return match(pred, true, iou).f1


def average_precision(
    pred: np.ndarray, true: np.ndarray, thresholds=DEFAULT_THRESHOLDS
) -> np.ndarray:
    """Average precision ``TP / (TP + FP + FN)`` at each IoU threshold.

    Parameters
    ----------
    pred, true : ndarray of int, shape (H, W)
        Predicted and true label images, 0 = background.
    thresholds : array-like of float, shape (K,)
        IoU thresholds; default 0.50, 0.55, ..., 0.95.

    Returns
    -------
    ndarray of float64, shape (K,)
        AP per threshold; ``.mean()`` is the mean AP over the thresholds.
    """
    return np.array([m.ap for m in match_many(pred, true, thresholds)])


def dsb_score(pred: np.ndarray, true: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> float:
    """The 2018 Data Science Bowl score of one image.

    Mean over IoU thresholds 0.50, 0.55, ..., 0.95 of ``TP / (TP + FP + FN)``.

    Parameters
    ----------
    pred, true : ndarray of int, shape (H, W)
        Predicted and true label images, 0 = background.
    thresholds : array-like of float
        IoU thresholds; default those of the competition.

    Returns
    -------
    float
    """
    return float(average_precision(pred, true, thresholds).mean())


def pooled_counts(matchings: list[Matching]) -> dict[str, float]:
    """Pool TP/FP/FN over many images (one :class:`Matching` each, same threshold).

    Returns a dict with ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1`` and ``ap``
    computed from the pooled counts (objects of all images weigh equally).
    """
    tp = sum(m.tp for m in matchings)
    fp = sum(m.fp for m in matchings)
    fn = sum(m.fn for m in matchings)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "ap": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
    }


def touching_labels(labels: np.ndarray) -> np.ndarray:
    """Labels of the objects that share a border (8-connected) with another object.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)

    Returns
    -------
    ndarray of shape (K,)
        Sorted labels of the touching objects.
    """
    lab = np.asarray(labels)
    found = []
    for a, b in (
        (lab[:, :-1], lab[:, 1:]),
        (lab[:-1, :], lab[1:, :]),
        (lab[:-1, :-1], lab[1:, 1:]),
        (lab[:-1, 1:], lab[1:, :-1]),
    ):
        sel = (a > 0) & (b > 0) & (a != b)
        found += [a[sel], b[sel]]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, lab.dtype)


def subset_counts(
    pred: np.ndarray, true: np.ndarray, subset: np.ndarray, iou: float = 0.5
) -> dict[str, int]:
    """TP/FP/FN restricted to a subset of the true objects (e.g. touching cells).

    A true object of the subset is a TP when matched, else a FN; an unmatched prediction is a
    FP of the subset when the true object it overlaps most (by IoU) belongs to the subset.

    Parameters
    ----------
    pred, true : ndarray of int, shape (H, W)
    subset : array-like of int
        Labels of ``true`` that form the subset.
    iou : float
        IoU threshold.

    Returns
    -------
    dict with ``tp``, ``fp``, ``fn``
    """
    mat, pred_ids, true_ids = iou_matrix(pred, true)
    r, c = _match_from_iou(mat, float(iou))
    in_sub = np.isin(true_ids, np.asarray(subset))
    tp = int(in_sub[c].sum())
    fn = int(in_sub.sum()) - tp
    unmatched = np.ones(pred_ids.size, bool)
    unmatched[r] = False
    fp = 0
    if mat.shape[1] and unmatched.any():
        rows = np.nonzero(unmatched)[0]
        best = mat[rows].argmax(axis=1)
        overlaps = mat[rows, best] > 0
        fp = int((overlaps & in_sub[best]).sum())
    return {"tp": tp, "fp": fp, "fn": fn}
