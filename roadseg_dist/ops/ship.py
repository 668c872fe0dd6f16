"""What ``roadseg submit`` uploads: the package and the job scripts, nothing else.

An allow-list, not a deny-list: a checkout also holds ``.env`` files, keys, data, model exports
and symlinks, none of which belongs on a cluster. ``stage`` copies the allowed entries into a
temp folder that becomes the job's working directory (a frozen copy: Ray hashes the folder
before it uploads it, and a file edited in between would break the job). Inside the allowed
folders, hidden files, caches and the runtime_env ``excludes`` are left out, and so is anything
that looks like a secret (``SECRET_NAMES``, or a private key inside), each with a line saying so.
A symlink is judged by what it resolves to, not by its own name: it is copied only when its
target is a shippable file inside the allowed folders (``configs/settings.yaml -> ../.env`` is not).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# Top-level entries of a checkout that a job may need; README is optional.
SHIP = ("roadseg_dist", "jobs", "configs", "pyproject.toml", "README.md")
ALWAYS_SKIPPED = ("__pycache__", "*.pyc", "*.egg-info", ".*")
# Names that hold secrets by convention (matched case-insensitively against the file's name and its
# target's): an allow-listed folder is no guarantee that nobody dropped a key or an env file in it.
SECRET_NAMES = ("*.env", ".env", ".env.*", "*.env.*", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
                "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx", "credentials*",
                "*service-account*.json", "*service_account*.json", ".netrc", "_netrc", ".pgpass",
                ".git-credentials", ".npmrc", ".pypirc", ".dockercfg", "kubeconfig*", "*.ovpn")
# the PEM/OpenSSH armour of any private key, whatever the file's name
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
SNIFF_BYTES = 1 << 16


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


def _secret_name(rel: str) -> str | None:
    """The SECRET_NAMES pattern the file name of ``rel`` matches, if any."""
    name = rel.rsplit("/", 1)[-1].lower()
    return next((p for p in SECRET_NAMES if fnmatch.fnmatchcase(name, p)), None)


def _holds_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return PRIVATE_KEY.search(f.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def _link_problem(path: Path, project: Path, skip: list[str]) -> str | None:
    """Why the symlink ``path`` must not be followed, judged on what it resolves to; None if fine."""
    if not _inside(path, project):
        return f"symlink to {os.readlink(path)} outside the checkout"
    target = path.resolve().relative_to(project).as_posix()
    if any(part.startswith(".") for part in target.split("/")):
        return f"symlink to the hidden {target}"
    if _secret_name(target):
        return f"symlink to {target}, a secret-looking name ({_secret_name(target)})"
    if target.split("/", 1)[0] not in SHIP or _excluded(target, skip):
        return f"symlink to {target}, which is not shipped (only {', '.join(SHIP)})"
    return None


def _walk(project: Path, rel: str, skip: list[str], manifest: Manifest) -> Iterator[str]:
    """Relative paths of the regular files to ship under ``rel`` (a file or a folder)."""
    path = project / rel
    if _secret_name(rel):
        manifest.skipped[rel] = f"secret-looking name ({_secret_name(rel)})"
        return
    if _excluded(rel, skip):  # caches, hidden files, the runtime_env excludes: no news to anyone
        return
    why = _link_problem(path, project, skip) if path.is_symlink() else None
    if why:
        manifest.skipped[rel] = why
    elif path.is_dir():
        for name in sorted(os.listdir(path)):
            yield from _walk(project, f"{rel}/{name}", skip, manifest)
    elif path.is_file():
        if _holds_private_key(path):
            manifest.skipped[rel] = "holds a private key"
        else:
            yield rel
    elif path.exists() or path.is_symlink():
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
