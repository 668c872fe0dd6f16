"""What ``roadseg submit`` uploads: the package and the job scripts, nothing else.

An allow-list, not a deny-list: a checkout also holds ``.env`` files, keys, data, model exports
and symlinks, none of which belongs on a cluster. ``stage`` copies the allowed entries into a
temp folder that becomes the job's working directory (a frozen copy: Ray hashes the folder
before it uploads it, and a file edited in between would break the job). Inside the allowed
folders, hidden files, caches and the runtime_env ``excludes`` are left out; a symlink is
copied only when it resolves inside the checkout, and never followed out of it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# Top-level entries of a checkout that a job may need; README is optional.
SHIP = ("roadseg_dist", "jobs", "configs", "pyproject.toml", "README.md")
ALWAYS_SKIPPED = ("__pycache__", "*.pyc", "*.egg-info", ".*")


@dataclasses.dataclass
class Manifest:
    files: dict[str, int] = dataclasses.field(default_factory=dict)   # relative path -> bytes
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # relative path -> why

    @property
    def total(self) -> int:
        return sum(self.files.values())


def _excluded(rel: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """gitignore-like enough for runtime_env excludes: a pattern matches a name or a relative path."""
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        p = pattern.strip("/")
        if p.startswith("**/"):
            p = p[3:]
        if fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p):
            return True
    return False


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError, RuntimeError):  # outside, or a symlink loop
        return False


def _walk(project: Path, rel: str, skip: list[str], manifest: Manifest) -> Iterator[str]:
    """Relative paths of the regular files to ship under ``rel`` (a file or a folder)."""
    path = project / rel
    if _excluded(rel, skip):
        return
    if path.is_symlink() and not _inside(path, project):
        manifest.skipped[rel] = f"symlink to {os.readlink(path)} outside the checkout"
        return
    if path.is_dir():
        for name in sorted(os.listdir(path)):
            yield from _walk(project, f"{rel}/{name}", skip, manifest)
    elif path.is_file():
        yield rel
    elif not path.exists() and not path.is_symlink():
        return
    else:
        manifest.skipped[rel] = "not a regular file"


def plan(project: Path, excludes: list[str] | tuple[str, ...] = ()) -> tuple[list[str], Manifest]:
    """The files ``stage`` would copy, and what it leaves out of the allowed folders and why."""
    project = project.resolve()
    skip = [*ALWAYS_SKIPPED, *excludes]
    manifest = Manifest()
    files = [rel for top in SHIP for rel in _walk(project, top, skip, manifest)]
    return files, manifest


@contextlib.contextmanager
def stage(project: Path, excludes: list[str] | tuple[str, ...] = ()) -> Iterator[tuple[str, Manifest]]:
    """A temp folder holding the allowed part of ``project``; removed on exit."""
    project = project.resolve()
    files, manifest = plan(project, excludes)
    with tempfile.TemporaryDirectory(prefix="roadseg-submit-") as tmp:
        for rel in files:
            dest = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                shutil.copyfile(project / rel, dest)  # follows an inside symlink, copies its bytes
                shutil.copymode(project / rel, dest)
            except FileNotFoundError:  # removed while we walked: not part of the snapshot
                continue
            manifest.files[rel] = os.path.getsize(dest)
        yield tmp, manifest


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def describe(manifest: Manifest, limit: int = 12) -> list[str]:
    """Lines saying what goes to the cluster: per top-level entry its files and bytes, then skips."""
    groups: dict[str, list[int]] = {}
    for rel, size in manifest.files.items():
        groups.setdefault(rel.split("/", 1)[0], []).append(size)
    lines = [f"shipping {len(manifest.files)} file(s), {_size(manifest.total)}: " +
             ", ".join(f"{top} ({len(s)} file(s), {_size(sum(s))})" for top, s in groups.items())]
    for rel, why in list(manifest.skipped.items())[:limit]:
        lines.append(f"not shipped: {rel} ({why})")
    if len(manifest.skipped) > limit:
        lines.append(f"not shipped: {len(manifest.skipped) - limit} more")
    return lines
