"""Install roadseg_dist into a fresh venv the way a user would, and use it: the claims of pyproject.toml, checked.

    python3 scripts/check_install.py                # core from constraints.txt: --help, a CPU `roadseg infer`
    python3 scripts/check_install.py --train        # ... then '.[train]': shard and a 1-epoch `roadseg train`
    python3 scripts/check_install.py --lowest       # every core requirement at its declared lower bound
                                                    # ("lowest-direct"), then the core's fast tests

A fresh venv with torch is ~5.5 GB and takes minutes, so this is a script and not a CI step (CI's budget
is ~20 minutes, `make test` most of it). torch and torchvision are installed first, pinned to the newest
build this project's index serves (--torch), as the Makefile does: even with --lowest, since no other
build can be installed here; their lower bounds (torch 2.5: `torch.onnx.export(dynamo=True)` with
`dynamic_shapes`, `torch.export` with named dims) rest on PyTorch's documentation.
Prints each step, its seconds, and the versions pip chose; exits 1 at the first step that fails.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH = ("2.14.1", "0.29.1")
CORE_TESTS = ["tests/test_packaging.py", "tests/test_checkpoint.py", "tests/test_models.py", "tests/test_predict.py",
              "tests/test_foundation.py", "-k", "not s3"]  # no moto, no dev extras here
MAKE_CHECKPOINT = ("import torch, sys; from roadseg_dist import build_model; "
                   "from roadseg_dist.models.checkpoint import save_checkpoint; torch.manual_seed(0); "
                   "save_checkpoint(sys.argv[1], build_model('unet', base_channels=4), input_size=(64, 96))")


def step(what: str, cmd: list[str], cwd: pathlib.Path, env: dict, show: int = 12) -> str:
    t0 = time.monotonic()
    print(f"$ {' '.join(cmd)}", flush=True)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    for line in text.splitlines()[-show:]:
        print(f"    {line}")
    print(f"  -> {what}: {'ok' if out.returncode == 0 else f'FAILED (exit {out.returncode})'} "
          f"in {time.monotonic() - t0:.0f} s", flush=True)
    if out.returncode != 0:
        sys.exit(1)
    return out.stdout


def lowest_constraints(py: str, extras: list[str], env: dict) -> str:
    """``name==V`` for every requirement of the core (and ``extras``) that has a lower bound, V the oldest
    release the index has within the declared range (``>=4.9`` may first be 4.9.0.80): "lowest-direct"."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import InvalidVersion, Version
    except ImportError:  # a bare interpreter: pip carries a copy
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import InvalidVersion, Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    pins = {}
    for req in map(Requirement, texts):
        if req.name in ("torch", "torchvision") or not any(s.operator in (">=", "~=", "==") for s in req.specifier):
            continue
        out = subprocess.run([py, "-m", "pip", "index", "versions", req.name], capture_output=True, text=True, env=env)
        listed = next((ln.split(":", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("Available versions:")), "")
        versions = []
        for text in listed.split(","):
            try:
                versions.append(Version(text.strip()))
            except InvalidVersion:
                pass
        inside = [v for v in versions if req.specifier.contains(v)]
        if not inside:
            sys.exit(f"no release of {req} on the index: {out.stdout[-300:]}{out.stderr[-300:]}")
        pins[req.name] = min(inside)
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def install(py: str, venv: pathlib.Path, spec: str, lowest: bool, extras: list[str], env: dict) -> None:
    if lowest:
        floor = venv / "lowest.txt"
        floor.write_text(lowest_constraints(py, extras, env))
        print(f"  lowest-direct: {floor.read_text().strip().replace(chr(10), ', ')}")
        pins = ["-c", str(floor)]
    else:
        pins = ["-c", str(ROOT / "constraints.txt")]
    step(f"pip install {spec}", [py, "-m", "pip", "install", "-q", *pins, "-e", spec], ROOT, env)


def use_core(venv: pathlib.Path, work: pathlib.Path, env: dict) -> None:
    bin_ = venv / "bin"
    step("roadseg --help", [str(bin_ / "roadseg"), "--help"], work, env, show=4)
    step("synth one clip", [str(bin_ / "roadseg"), "synth", "bdd", "--train", "8", "--val", "4", "--height", "64",
                            "--width", "96", "--videos", "1", "--video-frames", "6"], work, env)
    step("a checkpoint", [str(bin_ / "python"), "-c", MAKE_CHECKPOINT, "ckpt"], work, env)
    step("roadseg infer on CPU", [str(bin_ / "roadseg"), "infer", "ckpt", "bdd/videos", "segmented", "--amp", "off"],
         work, env)
    parts = list((work / "segmented" / "frames").glob("part-*.parquet"))  # the per-frame stats, in batches
    assert (work / "segmented" / "report.json").is_file() and parts, "roadseg infer left no report or frames/"


def use_train(venv: pathlib.Path, work: pathlib.Path, env: dict) -> None:
    roadseg = str(venv / "bin" / "roadseg")
    for split in ("train", "val"):
        step(f"shard {split}", [roadseg, "shard", "bdd", "shards", "--split", split, "--shard-size", "4"], work, env)
    step("roadseg train (1 epoch)", [roadseg, "train", "--data", "shards", "--storage", "runs", "--name", "r1",
                                     "--epochs", "1", "--num-workers", "1", "--base-channels", "4", "--batch-size",
                                     "2", "--crop", "64x96"], work, env)


def versions(py: str, env: dict) -> None:
    names = "ray torch torchvision segmentation-models-pytorch timm numpy pyarrow pandas opencv-python-headless " \
            "av s3fs aiobotocore botocore pillow click onnxscript tensorboard matplotlib"
    code = ("import importlib.metadata as m, sys\nfor n in sys.argv[1:]:\n    try: print(f'    {n}=={m.version(n)}')\n"
            "    except m.PackageNotFoundError: pass")
    print("  installed:", flush=True)
    subprocess.run([py, "-c", code, *names.split()], env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lowest", action="store_true", help="core requirements at their lower bounds, then tests")
    ap.add_argument("--train", action="store_true", help="also install '.[train]' and train one epoch")
    ap.add_argument("--venv", default=None, help="where to build the venv (default: a temp folder, removed)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter to build the venv with")
    a = ap.parse_args()
    venv = pathlib.Path(a.venv or tempfile.mkdtemp(prefix="roadseg-venv-"))
    work = pathlib.Path(tempfile.mkdtemp(prefix="roadseg-work-"))  # not the checkout: a user's folder
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")}
    py = str(venv / "bin" / "python")
    t0 = time.monotonic()
    try:
        step("fresh venv", [a.python, "-m", "venv", str(venv)], ROOT, env)
        step("pip", [py, "-m", "pip", "install", "-q", "--upgrade", "pip"], ROOT, env)
        step("torch first, pinned", [py, "-m", "pip", "install", "-q", f"torch=={TORCH[0]}",
                                     f"torchvision=={TORCH[1]}"], ROOT, env)
        install(py, venv, ".", a.lowest, [], env)
        versions(py, env)
        use_core(venv, work, env)
        if a.lowest:
            step("pytest", [py, "-m", "pip", "install", "-q", "pytest>=8", "pytest-timeout"], ROOT, env)
            step("core tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS], ROOT, env)
        if a.train:
            install(py, venv, ".[train]", a.lowest, ["train"], env)
            versions(py, env)
            use_train(venv, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if a.venv is None:
            shutil.rmtree(venv, ignore_errors=True)
    print(f"all steps passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
