"""Evaluation data and scores of the segmentation network: named splits and reserved seeds.

Every script that trains, tunes or benchmarks a segmentation model takes its data here, so the
splits cannot drift apart:

DSB2018 (``dsb_split(root, "train" | "validation")``)
    An image id is in the validation split when ``int(sha1(id)[:8], 16) % 100 <
    DSB_VAL_PERCENT`` (about 15 %), whatever the seed. Training and tuning use the training
    split only; the validation split is the benchmarks' test set of real nuclei.
Simulated fields (:data:`SIM_SPLITS`, :func:`simulated_split`)
    Each split is a seed (field ``k`` uses ``first + k``) or a seed-sequence prefix (field
    ``k`` uses ``(prefix, k)``) with a random appearance drawn from the field's own seed. The
    ``test`` and ``model_test`` splits are reserved for benchmarks (:data:`RESERVED_SEEDS`);
    training refuses seeds in them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hcsflow.segmentation.preprocess import _norm_kwargs, normalize, rescale_image, resize_labels

if TYPE_CHECKING:
    from hcsflow.segmentation.train import Field
    from hcsflow.simulate import SimulatedField


#: Fraction (percent) of DSB2018 ids held out for validation.
DSB_VAL_PERCENT = 15

#: Simulated splits: an int is the first seed (field ``k`` uses ``first + k``), a tuple a
#: seed-sequence prefix (field ``k`` uses ``(*prefix, k)``).
SIM_SPLITS: dict[str, int | tuple[int, ...]] = {
    # hcsflow train-segmenter (--sim-seed) and its validation fields
    "train": 1000,
    "validation": 101_000,
    # benchmarks/tune_inference.py: inference settings and deep-watershed parameters
    "tune": 800_000,
    "tune_postprocess": (2027,),
    # benchmarks/segmentation_model.py and benchmarks/segmentation.py (test data)
    "model_test": 700_000,
    "test": (2026,),
}

#: Offset of the validation seeds from the training seeds of ``hcsflow train-segmenter``.
VALIDATION_OFFSET = 100_000

#: Seeds reserved for test data: a range of int seeds, or a seed-sequence prefix. No
#: training or tuning may draw from them.
RESERVED_SEEDS: dict[str, range | tuple[int, ...]] = {
    "model_test": range(700_000, 800_000),
    "test": (2026,),
}


def sim_seed(split: str, k: int, first: int | None = None) -> int | tuple[int, ...]:
    """Seed of field ``k`` of a simulated split (``first`` replaces an int split's start)."""
    base = SIM_SPLITS[split]
    if isinstance(base, tuple):
        return (*base, int(k))
    return int(base if first is None else first) + int(k)


def check_training_seeds(first: int, n: int) -> None:
    """Raise ``ValueError`` when the seeds ``first .. first + n - 1`` meet a reserved range."""
    for name, reserved in RESERVED_SEEDS.items():
        if isinstance(reserved, range) and n > 0:
            if first < reserved.stop and first + n > reserved.start:
                raise ValueError(
                    f"simulated seeds {first}..{first + n - 1} overlap the seeds reserved for "
                    f"the {name!r} test split ({reserved.start}..{reserved.stop - 1})"
                )


def simulated_split(
    split: str,
    n: int,
    shape: tuple[int, int],
    image_mpp: float,
    *,
    first: int | None = None,
) -> Iterator[SimulatedField]:
    """The first ``n`` simulated fields of a split, each of random appearance.

    Field ``k`` has seed :func:`sim_seed` and an appearance drawn from
    ``default_rng(seed)``. In the ``test`` split every fourth field (``k % 4 == 0``) has the
    default appearance and every field a density drawn uniform in 0.6-1.6 from the same
    generator.

    Parameters
    ----------
    split : str
        A key of :data:`SIM_SPLITS`.
    n : int
        Number of fields.
    shape : tuple of int
        Field shape.
    image_mpp : float
        Micrometres per pixel.
    first : int, optional
        First seed of an int split (default the split's).
    """
    from hcsflow.simulate import random_appearance, simulate_field

    if split not in SIM_SPLITS:
        raise ValueError(f"unknown simulated split {split!r}; expected one of {list(SIM_SPLITS)}")
    for k in range(n):
        seed = sim_seed(split, k, first)
        rng = np.random.default_rng(seed)
        if split == "test":
            appearance = random_appearance(rng) if k % 4 else None
            density = float(rng.uniform(0.6, 1.6))
            yield simulate_field(seed, shape, image_mpp, appearance=appearance, density=density)
        else:
            yield simulate_field(seed, shape, image_mpp, appearance=random_appearance(rng))


def dsb_split(root: str | Path, split: str) -> list[str]:
    """Sorted ids of the DSB2018 images under ``root`` in the ``train`` or ``validation`` split."""
    if split not in ("train", "validation"):
        raise ValueError(f"DSB2018 split must be 'train' or 'validation', got {split!r}")
    return [i for i in list_dsb(root) if is_dsb_validation(i) == (split == "validation")]


def is_dsb_validation(image_id: str) -> bool:
    """Whether a DSB2018 image id belongs to the fixed validation split."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) % 100 < DSB_VAL_PERCENT


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent-circle diameter (pixels) of the objects of a label image."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return float("nan")
    return float(np.sqrt(4.0 * np.median(areas) / np.pi))


def list_dsb(root: str | Path) -> list[str]:
    """Sorted ids of the DSB2018 images under ``root`` (``images/<id>.png``)."""
    root = Path(root)
    ids = sorted(p.stem for p in (root / "images").glob("*.png"))
    if not ids:
        raise ValueError(f"no DSB2018 images found under {root / 'images'}")
    missing = [i for i in ids if not (root / "labels" / f"{i}.png").exists()]
    if missing:
        raise ValueError(f"DSB2018 images without labels under {root / 'labels'}: {missing[:5]}")
    return ids


def read_dsb(root: str | Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one DSB2018 image (H, W) and its labels (H, W)."""
    from skimage.io import imread

    root = Path(root)
    img = imread(root / "images" / f"{image_id}.png")
    lab = imread(root / "labels" / f"{image_id}.png")
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    return img, lab.astype(np.int32)


def iter_dsb_scaled(
    root: str | Path, ids: list[str], nuclear_diameter: float
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(id, image, labels)`` of DSB2018 images, the image normalized and rescaled so
    that nuclei are ``nuclear_diameter`` pixels across, the labels as annotated.

    Images without annotated nuclei are skipped.
    """
    for i in ids:
        img, lab = read_dsb(root, i)
        d = median_diameter(lab)
        if not np.isfinite(d):
            continue
        yield i, rescale_image(normalize(img, **_norm_kwargs()), nuclear_diameter / d), lab


def predict_maps(model, inp: np.ndarray) -> np.ndarray:
    """Run the network on one prepared input (2, H, W) -> maps (6, H, W), fg as probability."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(inp))[None])[0].numpy()
    out = out.copy()
    out[[2, 5]] = 1.0 / (1.0 + np.exp(-out[[2, 5]]))
    return out


def _instances(maps: np.ndarray, post: dict[str, Any], cells: bool):
    from hcsflow.segmentation.postprocess import (
        PostprocessParams,
        cells_from_nuclei,
        nuclei_from_maps,
    )

    params = PostprocessParams(**post)
    nuclei, _ = nuclei_from_maps(maps[0], maps[2], params)
    if not cells:
        return nuclei, None
    nuclei, cell_labels, _ = cells_from_nuclei(nuclei, maps[3], maps[5], params)
    return nuclei, cell_labels


def _scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    from hcsflow.segmentation.metrics import dsb_score, f1_at

    return f1_at(pred, true, 0.5), dsb_score(pred, true)


def summarize(scores: list[tuple[float, float]]) -> dict[str, float]:
    """Mean per-image F1@0.5 and DSB score (mean over IoU 0.5:0.95 of TP/(TP+FP+FN))."""
    return {
        "f1_05": float(np.mean([a for a, _ in scores])),
        "dsb": float(np.mean([b for _, b in scores])),
        "n_images": len(scores),
    }


def evaluate_dsb(
    model, root: str | Path, ids: list[str], nuclear_diameter: float, post: dict[str, Any]
) -> dict:
    """Nuclear F1@0.5 and DSB score on DSB2018 images (rescaled by the annotated size)."""
    scores = []
    for _, x, lab in iter_dsb_scaled(root, ids, nuclear_diameter):
        maps = predict_maps(model, np.stack([x, np.zeros_like(x)]))
        pred = resize_labels(_instances(maps, post, cells=False)[0], lab.shape)
        scores.append(_scores(pred, lab))
    return summarize(scores)


def evaluate_fields(
    model, fields: list[Field], post: dict[str, Any], use_cytoplasm: bool = True
) -> dict:
    """Nuclear and whole-cell F1@0.5 / DSB score on fields at model resolution.

    The cytoplasm input is the field's third candidate channel (AGP for simulated fields)
    or its only one.
    """
    nuc_scores, cell_scores = [], []
    for f in fields:
        k = f.cytoplasm.shape[0]
        has_cyto = use_cytoplasm and k > 0
        cyto = f.cytoplasm[min(2, k - 1)] if has_cyto else np.zeros_like(f.nuclear)
        maps = predict_maps(model, np.stack([f.nuclear, cyto]))
        nuclei, cells = _instances(maps, post, cells=has_cyto and f.cells is not None)
        nuc_scores.append(_scores(nuclei, f.nuclei))
        if cells is not None:
            cell_scores.append(_scores(cells, f.cells))
    out = {"nuclei": summarize(nuc_scores)}
    if cell_scores:
        out["cells"] = summarize(cell_scores)
    return out
