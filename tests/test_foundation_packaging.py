"""`curate.generators`, `curate.filters`, `curate.schemas` import from both an editable install and
a built wheel, and never as top-level `filters` / `schemas` / `generators`."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO


def _declared_packages() -> tuple[list[str], dict[str, str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return config["packages"], config["package-dir"]


def test_every_package_folder_is_declared():
    packages, mapping = _declared_packages()
    roots = {pkg: REPO / folder for pkg, folder in mapping.items()}
    found = set()
    for pkg, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    assert sorted(found) == sorted(packages), "add new package folders to [tool.setuptools] packages"


def test_editable_install_maps_folders_into_the_curate_namespace(tmp_path):
    code = ("import curate.filters, curate.generators, curate.schemas, importlib.util;"
            "print(curate.filters.__file__);"
            "print([importlib.util.find_spec(n) is None for n in ('filters', 'schemas', 'generators')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert out.splitlines() == [str(REPO / "filters" / "__init__.py"), "[True, True, True]"]


def test_built_wheel_imports_the_namespace_and_ships_no_top_level_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("trace_curate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {"filters", "schemas", "generators", "pipelines"} & tops == set()
    assert "curate/filters/__init__.py" in names and "curate/schemas/tables.py" in names
    assert "curate/pipelines/demo.yaml" in names
    assert any(n.startswith("curate/data/demo/") and n.endswith(".jsonl.gz") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    # -S: no site-packages, so the editable install cannot answer; only the wheel's files can.
    code = (f"import sys; sys.path.insert(0, {str(target)!r});"
            "import curate.filters, curate.generators, curate.pipelines;"
            "print(curate.filters.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.strip()
    assert Path(out) == target / "curate" / "filters" / "__init__.py"
