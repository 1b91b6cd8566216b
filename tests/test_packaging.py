"""The package, installed from a wheel away from the source checkout, finds its shipped files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


SECTIONS_CODE = (
    "from hcsflow.config import config_section, load_schema, SCHEMA_PATH; "
    "props = load_schema(SCHEMA_PATH)['properties']; "
    "print(json.dumps({n: config_section(n, {}) for n, v in props.items() "
    "if v.get('type') == 'object'}, sort_keys=True)); "
    "from hcsflow.analysis import AnalysisParams; "
    "print(json.dumps(dataclasses.asdict(AnalysisParams.from_config({})), sort_keys=True))"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel and installed into a folder away from the checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    return site


def _run(code: str, site: Path | None, cwd: Path) -> list[str]:
    """The lines ``code`` prints, run in isolated mode with ``site`` first on the path (or
    from the checkout when ``site`` is None)."""
    first = REPO if site is None else site
    run = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys, json, dataclasses; sys.path.insert(0, {str(first)!r}); {code}",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def test_wheel_install_ships_and_finds_the_segmentation_model(installed, tmp_path):
    code = (
        "import hcsflow, pathlib; "
        "from hcsflow.segmentation.segmenter import default_model_path; "
        "p = default_model_path(); "
        "print(pathlib.Path(hcsflow.__file__).resolve().parent); print(p); print(p.stat().st_size)"
    )
    pkg, model, size = _run(code, installed, tmp_path)
    assert Path(pkg) == (installed / "hcsflow").resolve()  # not the checkout
    assert Path(model).parent == Path(pkg) / "models"
    assert int(size) == (REPO / "hcsflow" / "models" / "segmenter_v5.pt").stat().st_size


def test_wheel_install_fills_configuration_defaults(installed, tmp_path):
    code = "import hcsflow.config as c; print(pathlib.Path(c.SCHEMA_PATH).resolve()); "
    code = "import pathlib; " + code + SECTIONS_CODE
    schema, sections, analysis = _run(code, installed, tmp_path)
    assert Path(schema) == (installed / "hcsflow" / "config.schema.yaml").resolve()
    _, want_sections, want_analysis = _run(code, None, tmp_path)
    assert json.loads(sections) == json.loads(want_sections)
    assert json.loads(analysis) == json.loads(want_analysis)
    schema_keys = yaml.safe_load((REPO / "hcsflow" / "config.schema.yaml").read_text())
    defaults = schema_keys["properties"]["analysis"]["properties"]
    filled = json.loads(sections)["analysis"]
    assert set(filled) == set(defaults)
    assert filled["null_size"] == defaults["null_size"]["default"]
    assert filled["distance"] == defaults["distance"]["default"]
