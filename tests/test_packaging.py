"""Installs the way Python users expect (issue 23): every import declared, bounds that hold, one version,
extras by use with a core that runs without them, one lock file that every install line uses."""
from __future__ import annotations

import ast
import importlib.metadata as md
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import roadseg_dist
from roadseg_dist import extras

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "roadseg_dist"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}
ALL = CORE + [r for reqs in EXTRAS.values() for r in reqs if canonicalize_name(r.name) != "roadseg-dist"]


def imported_modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"roadseg_dist"}


# import name -> distribution, for the modules of extras that may not be installed where this runs
NOT_THEIR_NAME = {"mlflow": ["mlflow-skinny"], "moto": ["moto"], "onnxruntime": ["onnxruntime"]}


def test_every_imported_distribution_is_declared():
    """PIL (images.py) and wrapt (s3http.py) were imported but installed only by luck (by smp, aiobotocore)."""
    declared = {canonicalize_name(r.name) for r in ALL}
    providers = {**NOT_THEIR_NAME, **md.packages_distributions()}
    undeclared = {m: providers.get(m) for m in imported_modules()
                  if not declared & {canonicalize_name(d) for d in providers.get(m, [m])}}
    assert undeclared == {}


def lower_bound(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def one_release_line(req: Requirement) -> bool:
    """Whether ``req`` admits one minor release line only (ray>=2.60,<2.61): its installed metadata is then
    what every resolution gets."""
    low = lower_bound(req)
    uppers = [Version(s.version) for s in req.specifier if s.operator in ("<", "<=")]
    return low is not None and bool(uppers) and min(uppers) <= Version(f"{low.major}.{low.minor + 1}")


def test_lower_bounds_satisfy_the_requirements_of_what_is_pinned():
    """A requirement held to one release line (ray 2.60.x) brings its own floors: a lower bound of ours below
    them (pyarrow>=15, pandas>=2.0 beside ray[data] 2.60's >=17, >=2.2.3) is one no resolver can pick."""
    ours = {canonicalize_name(r.name): r for r in ALL}
    conflicts = []
    for pinned in (r for r in ALL if one_release_line(r)):
        for text in md.requires(pinned.name) or []:
            dep = Requirement(text)
            extra_ok = dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in pinned.extras | {""})
            mine = ours.get(canonicalize_name(dep.name))
            if extra_ok and mine is not None and lower_bound(mine) and not dep.specifier.contains(
                    lower_bound(mine), prereleases=True):
                conflicts.append(f"{mine} vs {pinned.name}'s {dep}")
    assert conflicts == []


def test_the_version_has_one_source():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "roadseg_dist.__version__"}
    assert Version(roadseg_dist.__version__)  # a valid version, in roadseg_dist/__init__.py alone


def test_license_typed_marker_and_module_entry_point():
    assert PROJECT["license"] == "Apache-2.0" and "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert (PACKAGE / "py.typed").is_file()
    out = subprocess.run([sys.executable, "-m", "roadseg_dist", "--version"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"roadseg, version {roadseg_dist.__version__}"


def test_the_lock_pins_every_requirement_within_its_range_and_every_install_uses_it():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    for req in ALL:
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req
    installs = {"Makefile": (ROOT / "Makefile").read_text(), "k8s/Dockerfile": (ROOT / "k8s/Dockerfile").read_text(),
                "cluster.yaml": (ROOT / "cluster.yaml").read_text()}
    for where, text in installs.items():
        lines = [ln for ln in text.replace(">-\n", "").splitlines() if "pip install" in ln and "--upgrade pip" not in ln]
        assert lines and all("constraints.txt" in ln for ln in lines), where


BLOCKER = """
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import roadseg_dist.extras as extras
extras.installed = lambda m: m.split(".")[0] not in BLOCKED
import roadseg_dist.infer.pipeline, roadseg_dist.results.page, roadseg_dist.models.checkpoint  # what infer runs
from click.testing import CliRunner
from roadseg_dist.cli import main
print(json.dumps([(r.exit_code, r.stdout, r.stderr) for r in (CliRunner().invoke(main, json.loads(a), prog_name="roadseg")
                                                              for a in sys.argv[2:])]))
"""
CASES = [([], None), (["infer", "--help"], None), (["train", "--data", "d", "--storage", "s", "--name", "n"], "train"),
         (["eval", "ckpt", "--data", "d"], "train"), (["frames", "out"], "infer"), (["submit", "check"], "cluster"),
         (["export", "ckpt", "m.onnx", "--format", "onnx"], "export")]


@pytest.fixture(scope="module")
def without_extras() -> list[tuple[int, str, str]]:
    """`roadseg ARGS` for each of CASES where no module of any extra can be imported (as after a plain
    `pip install roadseg_dist`), in one process."""
    import json

    blocked = sorted({m.split(".")[0] for modules in extras.MODULES.values() for m in modules}
                     | {"ray.train", "torch.utils.tensorboard"})
    out = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(blocked),
                          *(json.dumps(args or ["--help"]) for args, _ in CASES)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: " ".join(CASES[i][0][:1]) or "help")
def test_the_core_runs_without_the_extras_and_names_the_missing_one(without_extras, case):
    code, stdout, stderr = without_extras[case]
    extra = CASES[case][1]
    if extra is None:
        assert code == 0, stderr[-2000:]
        assert "Usage: roadseg" in stdout
    else:
        assert code == 1, stdout + stderr[-2000:]
        assert f"needs the '{extra}' extra" in stderr and f"pip install 'roadseg_dist[{extra}]'" in stderr
        assert "Traceback" not in stderr
