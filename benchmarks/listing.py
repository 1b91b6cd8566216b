"""Cost of the start-up image listing (``hcsflow.listing``) on a synthetic plate folder.

Writes one folder of empty files named in the ImageXpress layout (by default 384 wells x 9
sites x 5 channels = 17,280 files, a typical 384-well Cell Painting plate), then times, with a
warm file-system cache, the median wall-clock and CPU time (user + system, which is what the
scan costs on an idle machine) of several repeats of:

- ``list``: :func:`hcsflow.listing.list_images` with the layout (one ``scandir`` + one ``stat``
  per file + the file-name match);
- ``list, no layout``: the same without the file-name match;
- ``update, unchanged``: :func:`hcsflow.listing.update_listings` when nothing changed (list,
  format, compare with the file on disk; nothing written): what every workflow start pays;
- ``update, one file changed``: the same after one file's mtime moved (the listing is written).

Usage: python benchmarks/listing.py [--wells 384] [--sites 9] [--channels 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from hcsflow.listing import list_images, update_listings


def make_plate(folder: Path, wells: int, sites: int, channels: int) -> int:
    """Empty files ``P_{well}_s{site}_w{ch}.tif``; returns how many."""
    folder.mkdir(parents=True)
    rows = "ABCDEFGHIJKLMNOP"
    cols = max(1, wells // len(rows)) if wells > 96 else 12
    names = [f"{r}{c:02d}" for r in rows for c in range(1, cols + 1)][:wells]
    n = 0
    for well in names:
        for s in range(1, sites + 1):
            for ch in range(1, channels + 1):
                (folder / f"P_{well}_s{s}_w{ch}.tif").touch()
                n += 1
    return n


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wells", type=int, default=384)
    ap.add_argument("--sites", type=int, default=9)
    ap.add_argument("--channels", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        n = make_plate(images, args.wells, args.sites, args.channels)
        out = Path(tmp) / "listing"
        plates = [("P", images, "imagexpress")]
        update_listings(plates, out)  # first listing, and warms the cache
        one = images / "P_A01_s1_w1.tif"

        def changed() -> None:
            st = one.stat()
            os.utime(one, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
            assert update_listings(plates, out) == ["P"]

        rows = [
            ("list", timed(lambda: list_images(images, "imagexpress"), args.repeats)),
            ("list, no layout", timed(lambda: list_images(images), args.repeats)),
            ("update, unchanged", timed(lambda: update_listings(plates, out), args.repeats)),
            ("update, one file changed", timed(changed, args.repeats)),
        ]
        size = (out / "P.tsv").stat().st_size
    print(f"{n} files in one folder; listing file {size / 1e6:.2f} MB")
    print("| step | wall s per plate | CPU s per plate | CPU µs per file | CPU s, 100 plates |")
    print("|---|---|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {1e6 * cpu / n:.1f} | {100 * cpu:.1f} |")


if __name__ == "__main__":
    main()
