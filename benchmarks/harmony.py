"""Harmony here (numpy) against harmonypy on the same principal components.

Two data sets, each with known batches and treatments:

- ``simulated``: a screen of ``--batches`` batches, each holding every treatment (``--moas``
  MoAs x ``--compounds`` compounds, ``--reps`` wells per batch) and DMSO; profiles are a
  low-rank treatment effect + a per-batch additive shift and feature scaling + noise.
- ``lincs``: the LINCS plate SQ00015054 (``../shared/data/lincs_profiles``), normalized to
  DMSO, its wells split into two pseudo-batches by plate column parity (odd/even) and the
  second batch shifted by a random direction of ``--lincs-shift`` times the features' SD.

Both methods get the same principal components (``hcsflow.profiling.batch._pca``, 50 or
fewer) and the same parameters (theta 2, sigma 0.1, lambda 1, the same number of clusters,
10 rounds). Printed per data set and method (none = uncorrected PCs):

- ``batch silhouette``: silhouette of the batch labels (cosine; 0 = mixed, lower is better);
- ``cross-batch 1-NN``: fraction of wells whose nearest well (cosine) among the *other*
  batches has the same treatment (simulated: compound; LINCS: compound, any dose);
- ``mAP``: mean average precision of retrieving the same treatment (cosine ranking over all
  other wells);
- ``time``: seconds of the correction (best of ``--repeat``);
- agreement with the other method: Pearson correlation of the pairwise cosine distances and
  mean overlap of the 10 nearest neighbours.

harmonypy is GPL-3.0-or-later; it is not a dependency of the project. Install it into a
private environment to run this (``pip install harmonypy``)::

    python benchmarks/harmony.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _tables import markdown  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hcsflow import profiling as P  # noqa: E402
from hcsflow.profiling.batch import _pca  # noqa: E402

LINCS = REPO.parent / "shared" / "data" / "lincs_profiles"
LINCS_PLATE = LINCS / "SQ00015054_normalized_feature_select.csv.gz"


def simulated(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, batch and treatment of each well of a simulated multi-batch screen."""
    rng = np.random.default_rng(args.seed)
    p, rank = 200, 12
    basis = rng.normal(size=(rank, p))
    moa = rng.normal(size=(args.moas, rank)) * 1.5
    effects = {"DMSO": np.zeros(p)}
    for m in range(args.moas):
        for c in range(args.compounds):
            effects[f"m{m}c{c}"] = (moa[m] + 0.5 * rng.normal(size=rank)) @ basis / np.sqrt(rank)
    rows, treat, batch = [], [], []
    for b in range(args.batches):
        shift = rng.normal(size=p) * 1.0
        scale = np.exp(rng.normal(size=p) * 0.2)
        for name, eff in effects.items():
            for _ in range(args.reps * (4 if name == "DMSO" else 1)):
                rows.append((eff + shift + rng.normal(size=p) * 0.6) * scale)
                treat.append(name)
                batch.append(f"b{b}")
    return np.array(rows), np.array(batch), np.array(treat)


def lincs(args) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """LINCS features with two pseudo-batches (odd/even columns, the even ones shifted)."""
    if not LINCS_PLATE.exists():
        return None
    prof = P.normalize_plates(P.read_profiles_table(LINCS_PLATE))
    feats = P.feature_columns(prof)
    x = prof[feats].to_numpy(dtype=np.float64)
    keep = np.isfinite(x).all(axis=0)
    x = x[:, keep]
    col = prof["Metadata_Well"].str[1:].astype(int).to_numpy()
    batch = np.where(col % 2 == 0, "even", "odd")
    rng = np.random.default_rng(args.seed)
    direction = rng.normal(size=x.shape[1])
    shift = direction * x.std(axis=0) * args.lincs_shift
    x = x + np.where(batch == "even", 1.0, 0.0)[:, None] * shift
    treat = prof["Metadata_Compound"].to_numpy(dtype=str)
    return x, batch, treat


def ours(pcs: np.ndarray, batch: np.ndarray, k: int) -> np.ndarray:
    return P.harmony_embedding(pcs, batch, theta=2.0, sigma=0.1, lamb=1.0, n_clusters=k, seed=0)


def harmonypy(pcs: np.ndarray, batch: np.ndarray, k: int) -> np.ndarray:
    import harmonypy as hp

    meta = pd.DataFrame({"batch": batch})
    ho = hp.run_harmony(
        pcs,
        meta,
        ["batch"],
        theta=2.0,
        lamb=1.0,
        sigma=0.1,
        nclust=k,
        max_iter_harmony=10,
        random_state=0,
        verbose=False,
        ncores=1,
    )
    z = np.asarray(ho.Z_corr)
    return z if z.shape == pcs.shape else z.T


def _cosine(x: np.ndarray) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return xn @ xn.T


def metrics(z: np.ndarray, batch: np.ndarray, treat: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import silhouette_score

    sim = _cosine(z)
    np.fill_diagonal(sim, -np.inf)
    other = np.where(batch[:, None] != batch[None, :], sim, -np.inf)
    nn = other.argmax(axis=1)
    query = treat != "DMSO"
    same = treat[:, None] == treat[None, :]
    aps = []
    for i in np.flatnonzero(query):
        order = np.argsort(-sim[i], kind="stable")[:-1]  # the row itself (-inf) last
        hits = same[i, order]
        if hits.sum() == 0:
            continue
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return {
        "batch silhouette": float(silhouette_score(z, batch, metric="cosine")),
        "cross-batch 1-NN": float((treat[nn] == treat)[query].mean()),
        "mAP": float(np.mean(aps)),
    }


def agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> tuple[float, float]:
    da = 1 - _cosine(a)
    db = 1 - _cosine(b)
    iu = np.triu_indices(len(a), 1)
    r = float(np.corrcoef(da[iu], db[iu])[0, 1])
    np.fill_diagonal(da, np.inf)
    np.fill_diagonal(db, np.inf)
    na = np.argsort(da, axis=1)[:, :k]
    nb = np.argsort(db, axis=1)[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb, strict=True)])
    return r, float(overlap)


def run(name: str, x: np.ndarray, batch: np.ndarray, treat: np.ndarray, repeat: int) -> list:
    pcs = _pca(x, min(50, *x.shape))
    k = int(min(100, max(2, round(len(x) / 30))))
    out = {"none": (pcs, 0.0)}
    for method, fn in (("hcsflow", ours), ("harmonypy", harmonypy)):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            z = fn(pcs, batch, k)
            times.append(time.perf_counter() - t0)
        out[method] = (z, min(times))
    r, overlap = agreement(out["hcsflow"][0], out["harmonypy"][0])
    rows = []
    for method, (z, t) in out.items():
        row = {"data": f"{name} ({len(x)} wells, {pcs.shape[1]} PCs, k {k})", "method": method}
        row.update({m: f"{v:.3f}" for m, v in metrics(z, batch, treat).items()})
        row["time (s)"] = f"{t:.2f}" if method != "none" else "-"
        rows.append(row)
    rows.append(
        {
            "data": name,
            "method": "hcsflow vs harmonypy",
            "batch silhouette": f"distance r {r:.3f}",
            "cross-batch 1-NN": f"10-NN overlap {overlap:.3f}",
            "mAP": "",
            "time (s)": "",
        }
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--moas", type=int, default=6)
    ap.add_argument("--compounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3, help="wells per treatment and batch")
    ap.add_argument("--lincs-shift", type=float, default=1.0, help="batch shift in feature SDs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-lincs", action="store_true")
    args = ap.parse_args()
    rows = run("simulated", *simulated(args), args.repeat)
    data = None if args.no_lincs else lincs(args)
    if data is not None:
        rows += run("LINCS", *data, args.repeat)
    print(markdown(rows))


if __name__ == "__main__":
    main()
