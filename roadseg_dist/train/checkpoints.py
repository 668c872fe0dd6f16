"""The checkpoint folders of a run directory: committed by our rule, pruned by us, resumed from the
newest intact one.

    commit(local, url)          copy a finished local checkpoint: meta.json removed first and written
                                last, so a folder without it is unfinished and never loaded; on a
                                failure the partial folder is removed and the error names it
    ray_upload(run_dir, keep)   Ray Train's ``checkpoint_upload_fn``: Ray's copy of each epoch's
                                checkpoint goes through ``commit`` too, then older epochs are pruned
    keep_best(run_dir, ...)     rank 0's copy of the best checkpoint (``checkpoint_best-epochNNNN``)
    resume_point(run_dir)       the newest checkpoint that loads (meta, weights, training state) and
                                what was skipped on the way, and why
    forget_ray_snapshot(...)    Ray's list of the run's checkpoints, dropped before a resumed ``fit()``

Why our rule and not Ray's snapshot: Ray copies a checkpoint file by file under its final name (a full
disk leaves ``meta.json`` beside a truncated ``train_state.pt``) and refuses to start when a folder its
snapshot lists was removed by hand. The run directory is the truth; Ray's snapshot is derived from it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re

from roadseg_dist import storage
from roadseg_dist.errors import JobError
from roadseg_dist.models.checkpoint import CheckpointError, META_FILE, MODEL_FILE, TRAIN_STATE_FILE

BEST_PREFIX = "checkpoint_best-epoch"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
_EPOCH_DIR = re.compile(r"^checkpoint_epoch(\d+)$")
_CKPT = re.compile(r"^checkpoint_")


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch{epoch:04d}"


def best_name(epoch: int) -> str:
    return f"{BEST_PREFIX}{epoch:04d}"


def checkpoint_dirs(run_dir: str) -> list[str]:
    """URLs of the checkpoint folders of a run that hold a finished checkpoint (meta.json)."""
    if not storage.exists(run_dir):
        return []
    found = set()
    for url in storage.list_files(run_dir, suffixes=(META_FILE,)):
        folder = url.rsplit("/", 1)[0]
        if folder.rsplit("/", 1)[0] == storage.normalize(run_dir) and _CKPT.match(folder.rsplit("/", 1)[-1]):
            found.add(folder)
    return sorted(found)


def full_disk_advice(exc: OSError) -> str:
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return ("the disk is full: free space there (or point --storage elsewhere), then continue "
                "the run with --resume")
    return "check that the storage is writable and reachable, then continue the run with --resume"


@contextlib.contextmanager
def writing(url: str):
    """Turn an OSError while writing ``url`` into a JobError that names it and says what to do."""
    try:
        yield
    except OSError as exc:
        raise JobError(f"could not write {storage.redact(url)}: {exc.strerror or exc}; "
                       f"{full_disk_advice(exc)}") from None


def commit(local: str, url: str) -> None:
    """Copy the local checkpoint folder ``local`` to ``url`` by the checkpoint rule (meta.json last)."""
    names = sorted(os.listdir(local), key=lambda n: n == META_FILE)
    try:
        storage.remove(storage.join(url, META_FILE))
        for name in names:
            storage.upload(os.path.join(local, name), storage.join(url, name))
    except OSError as exc:
        try:
            storage.remove(url, recursive=True)
        except OSError:
            pass
        raise JobError(f"could not save checkpoint {storage.redact(url)}: {exc.strerror or exc}; "
                       f"{full_disk_advice(exc)}. The unfinished folder was removed; the earlier "
                       f"checkpoints are intact.") from None


def prune(run_dir: str, keep: int) -> None:
    """Remove epoch checkpoints beyond the newest ``keep`` (by epoch) and unfinished epoch folders
    older than the newest finished one; best copies are never pruned."""
    finished = sorted(int(m.group(1)) for m in (_EPOCH_DIR.match(u.rsplit("/", 1)[-1])
                                                for u in checkpoint_dirs(run_dir)) if m)
    if not finished:
        return
    kept = set(finished[-keep:])
    for name in _epoch_folders(run_dir):
        epoch = int(_EPOCH_DIR.match(name).group(1))
        if epoch not in kept and epoch < finished[-1]:
            storage.remove(storage.join(run_dir, name), recursive=True)


def _epoch_folders(run_dir: str) -> list[str]:
    """Names of the run's ``checkpoint_epochNNNN`` folders, finished or not."""
    names = {u[len(storage.normalize(run_dir)) + 1:].split("/", 1)[0] for u in storage.list_files(run_dir)}
    return sorted(n for n in names if _EPOCH_DIR.match(n))


def ray_upload(run_dir: str, keep: int):
    """``checkpoint_upload_fn`` for ``ray.train.report``: commit by our rule, prune, return Ray's view."""
    def upload(checkpoint, name: str):
        import ray.train

        url = storage.join(run_dir, name)
        commit(checkpoint.path, url)
        prune(run_dir, keep)
        fs, path = storage.arrow_filesystem(url)
        return ray.train.Checkpoint(path=path, filesystem=fs)
    return upload


def keep_best(run_dir: str, local_checkpoint: str, epoch: int) -> None:
    """Copy a new best checkpoint into the run dir, then drop the previous best copy.

    Not Ray's ``CheckpointConfig(checkpoint_score_attribute=..., num_to_keep=K)``: it keeps the top K by
    score and deletes the others, the newest included, so ``--resume`` could only go back to an older
    epoch; here the newest ``--keep`` epochs stay for resuming and the best is a copy beside them."""
    commit(local_checkpoint, storage.join(run_dir, best_name(epoch)))
    for url in checkpoint_dirs(run_dir):
        folder = url.rsplit("/", 1)[-1]
        if folder.startswith(BEST_PREFIX) and folder != best_name(epoch):
            storage.remove(url, recursive=True)


def epoch_of(url: str) -> int:
    from roadseg_dist.models.checkpoint import read_meta

    return int(read_meta(url).get("epoch") or 0)


def check_intact(url: str) -> int:
    """The epoch of a checkpoint folder whose meta.json, weights and training state all load;
    CheckpointError naming the file otherwise."""
    from roadseg_dist.models.checkpoint import load_train_state, read_weights

    epoch = epoch_of(url)
    read_weights(url)
    if not storage.exists(storage.join(url, TRAIN_STATE_FILE)) or load_train_state(url) is None:
        raise CheckpointError(f"{storage.redact(url)} has no {TRAIN_STATE_FILE} (a model-only checkpoint)")
    return epoch


def resume_point(run_dir: str) -> tuple[str | None, int, list[tuple[str, str]]]:
    """(newest intact checkpoint or None, its epoch, [(folder, why it was skipped)]), newest first.

    Folders are ordered by the epoch in their name; a folder without meta.json is unfinished.
    """
    folders = []
    for name in {u[len(storage.normalize(run_dir)) + 1:].split("/", 1)[0] for u in storage.list_files(run_dir)}:
        found = re.search(r"epoch(\d+)$", name)
        if _CKPT.match(name) and found:
            folders.append((int(found.group(1)), not name.startswith(BEST_PREFIX), name))
    skipped = []
    for _, _, name in sorted(folders, reverse=True):
        url = storage.join(run_dir, name)
        if not storage.exists(storage.join(url, META_FILE)):
            has_model = storage.exists(storage.join(url, MODEL_FILE))
            skipped.append((url, f"unfinished (no {META_FILE}{'' if has_model else ', no ' + MODEL_FILE})"))
            continue
        try:
            return url, check_intact(url), skipped
        except CheckpointError as exc:
            skipped.append((url, str(exc)))
    return None, 0, skipped


def forget_ray_snapshot(run_dir: str) -> None:
    """Drop Ray's snapshot of the run's checkpoints: a resumed fit starts from ``resume_point``."""
    storage.remove(storage.join(run_dir, RAY_SNAPSHOT))
