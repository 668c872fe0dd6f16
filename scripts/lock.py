"""Write constraints.txt: the exact version of every package roadseg_dist[dev] installs, as installed here.

    .venv/bin/python scripts/lock.py        # after `make test` passed in .venv; commit constraints.txt

The closure is walked from pyproject.toml's requirements (the core and every extra) through each
installed distribution's own requirements (markers evaluated for this interpreter: the file is for
CPython 3.11 on Linux x86_64, what CI, the Docker image and the cluster nodes run). The Makefile,
k8s/Dockerfile and cluster.yaml install with `-c constraints.txt`, so every machine gets what the tests
passed with; pyproject.toml keeps the ranges that a library user's resolver may choose from.
"""
from __future__ import annotations

import importlib.metadata as md
import pathlib
import platform
import sys
import tomllib

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
SELF = "roadseg-dist"


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**default_environment(), "extra": e}) for e in (extras or {""}))


def closure(roots: list[Requirement]) -> dict[str, str]:
    """canonical name -> installed version of everything the requirements pull in here."""
    pins: dict[str, str] = {}
    todo = [(r, set()) for r in roots if applies(r, set())]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if name == SELF or key in seen:
            continue
        seen.add(key)
        dist = md.distribution(req.name)  # raises if a requirement is not installed here: lock from a full venv
        pins[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if applies(sub, set(req.extras)):
                todo.append((sub, set()))
    return pins


def main() -> int:
    pins = closure(project_requirements())
    lines = [f"# roadseg_dist[dev] as installed by `make test` (CPython {platform.python_version()}, "
             f"{sys.platform} {platform.machine()}); written by scripts/lock.py, used with pip's -c by the",
             "# Makefile, k8s/Dockerfile and cluster.yaml. Regenerate after changing pyproject.toml's requirements.",
             *(f"{name}=={version}" for name, version in sorted(pins.items()))]
    (ROOT / "constraints.txt").write_text("\n".join(lines) + "\n")
    print(f"constraints.txt: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
