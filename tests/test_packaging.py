"""The package, installed from a wheel away from the source checkout, finds its shipped files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_wheel_install_ships_and_finds_the_segmentation_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hcsflow", src / "hcsflow", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    build = subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "No module named setuptools" in build.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("hcsflow-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True
    )
    code = (
        "import hcsflow, pathlib; "
        "from hcsflow.segmentation.segmenter import default_model_path; "
        "p = default_model_path(); "
        "print(pathlib.Path(hcsflow.__file__).resolve().parent); print(p); print(p.stat().st_size)"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    pkg, model, size = run.stdout.split()
    assert Path(pkg) == (site / "hcsflow").resolve()  # not the checkout
    assert Path(model).parent == Path(pkg) / "models"
    assert int(size) == (REPO / "hcsflow" / "models" / "segmenter_v5.pt").stat().st_size
