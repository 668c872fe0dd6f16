"""Same inputs, same bytes: synth -> shard -> a 1-epoch tiny train -> eval -> infer, through the ``roadseg``
command line only (so it runs against any checkout: ``PYTHONPATH=CHECKOUT python benchmarks/check_identical.py``),
then one ``sha256  path`` line per output file, sorted, on stdout. Run it before and after a refactoring
and ``diff`` the two listings.

Timing fields and paths are left out: ``eval.json``'s ``seconds`` / ``images_per_s`` and paths are dropped
before hashing, a stats part is hashed as its rows with the work folder cut from them; the
infer run's ``report.json``, its resume state (``.roadseg/``) and its HTML pages (run times) are not hashed.
Training on CPUs may not be bitwise repeatable: ``--checkpoint DIR`` evaluates and segments with that
saved checkpoint instead of the one just trained (the trained one's hash is printed either way).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

SKIP_PARTS = {".roadseg"}
SKIP_NAMES = {"report.json", "summary.json", "status.json", "metrics.jsonl", "eval.md", "iou.png",
              "curves.png", "sources.js", "checkpoint_manager_snapshot.json"}


def roadseg(*args: str) -> None:
    cmd = [sys.executable, "-m", "roadseg_dist", *args]
    print("$ roadseg " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def digest(path: pathlib.Path, work: pathlib.Path) -> str:
    """sha256 of the file; of eval.json without its timings and paths; of a stats part's rows with the
    work folder cut from its paths (``source`` is an absolute URL)."""
    if path.name == "eval.json":
        doc = json.loads(path.read_text())
        for key in ("seconds", "images_per_s", "checkpoint", "data", "predictions"):
            doc.pop(key, None)
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        text = json.dumps(rows, sort_keys=True, default=str).replace(str(work), "WORKDIR")
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(root: pathlib.Path, folder: str) -> list[str]:
    lines = []
    for path in sorted((root / folder).rglob("*")):
        rel = path.relative_to(root)
        if (not path.is_file() or SKIP_PARTS & set(rel.parts) or path.name in SKIP_NAMES
                or path.suffix == ".html" or "tensorboard" in rel.parts):
            continue
        name = re.sub(r"part-[^/]*\.parquet$", "part-*.parquet", rel.as_posix())  # part names hold the time
        lines.append(f"{digest(path, root)}  {name}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/roadseg-check-identical")
    p.add_argument("--checkpoint", help="evaluate and segment with this checkpoint instead of the trained one")
    p.add_argument("--keep-checkpoint", help="copy the trained checkpoint here (for a later --checkpoint)")
    p.add_argument("--hash-only", action="store_true", help="only hash what an earlier run left in --workdir")
    a = p.parse_args()
    work = pathlib.Path(a.workdir)
    if a.hash_only:
        print("\n".join(hashes(work, sorted((work / "runs" / "tiny").glob("checkpoint_epoch*"))[-1])))
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chdir(work)
    roadseg("synth", "data", "--train", "8", "--val", "4", "--height", "64", "--width", "96",
            "--videos", "1", "--video-frames", "6", "--seed", "3")
    for split in ("train", "val"):
        roadseg("shard", "data", "shards", "--split", split, "--shard-size", "3")
    roadseg("train", "--data", "shards", "--storage", "runs", "--name", "tiny", "--base-channels", "4",
            "--epochs", "1", "--batch-size", "2", "--crop", "48x64", "--num-workers", "1", "--seed", "0",
            "--num-cpus", "2", "--overlays", "0")
    trained = sorted((work / "runs" / "tiny").glob("checkpoint_epoch*"))[-1]
    if a.keep_checkpoint:
        shutil.rmtree(a.keep_checkpoint, ignore_errors=True)
        shutil.copytree(trained, a.keep_checkpoint)
    ckpt = a.checkpoint or str(trained)
    roadseg("eval", ckpt, "--data", "shards", "--split", "val", "--out", "eval", "--workers", "1",
            "--num-cpus", "2", "--save-preds", "eval/preds")
    roadseg("infer", ckpt, "data/videos", "segmented", "--outputs", "mask,color,overlay,original,video,stats",
            "--num-cpus", "2", "--concurrency", "1", "--no-view")
    print("\n".join(hashes(work, trained)))


def hashes(work: pathlib.Path, trained: pathlib.Path) -> list[str]:
    lines = [f"{digest(trained / name, work)}  trained/{name}" for name in ("model.safetensors", "model.pt")
             if (trained / name).exists()]
    for folder in ("shards", "eval", "segmented"):
        lines += listing(work, folder)
    return lines


if __name__ == "__main__":
    main()
