"""The one checkpoint format, used by training, evaluation, inference and export.

A checkpoint is a directory (local or ``s3://``) holding

    model.safetensors the network's weights, and config.json how to build it: smp's own format for
                      smp-based models, so ``segmentation_models_pytorch.from_pretrained(DIR)`` loads them
                      (``weights.py``)
    model.pt          the same weights as a torch state dict (keys ``net.*``): what earlier checkpoints
                      hold alone, and still read when there is no model.safetensors
    train_state.pt    optional: optimizer / scheduler / scaler state, epoch ... (for resuming)
    meta.json         how to rebuild and feed the model (see ``meta_for``); written LAST, so a
                      directory without it is an unfinished checkpoint and is never loaded

A *run directory* holds ``checkpoint_*`` directories (Ray Train writes them); ``load_model(run_dir)``
picks the one with the best ``metrics["val_miou"]`` (ties: the latest epoch).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import logging
from typing import Any

import torch
from torch import nn

from roadseg_dist import __version__, labels, storage
from roadseg_dist.models import weights
from roadseg_dist.settings import SECRET_KEY

log = logging.getLogger(__name__)

FORMAT = "roadseg-checkpoint/1"
MODEL_FILE = weights.LEGACY  # model.pt
WEIGHTS_FILES = (weights.SAFETENSORS, weights.LEGACY)  # what load_model reads, in order of preference
META_FILE = "meta.json"
TRAIN_STATE_FILE = "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


# --- writing ---------------------------------------------------------------------------------------

def scrub(config: Any) -> Any:
    """A JSON-ready copy of a training config with secret-looking keys dropped and URLs redacted."""
    if hasattr(config, "__dataclass_fields__"):
        import dataclasses
        config = dataclasses.asdict(config)
    if isinstance(config, dict):
        return {str(k): scrub(v) for k, v in config.items() if not SECRET_KEY.search(str(k))}
    if isinstance(config, (list, tuple)):
        return [scrub(v) for v in config]
    if isinstance(config, str):
        return storage.redact(config)
    if config is None or isinstance(config, (bool, int, float)):
        return config
    return storage.redact(str(config))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def meta_for(model: nn.Module, *, epoch: int = 0, metrics: dict | None = None,
             train_config: Any = None, input_size: tuple[int, int] | list[int] | None = None) -> dict:
    """The meta.json description of a model built by ``build_model``."""
    model = unwrap(model)
    if not hasattr(model, "arch") or not hasattr(model, "arch_kwargs"):
        raise CheckpointError(f"{type(model).__name__} does not describe itself (no .arch/.arch_kwargs): "
                              "build models with roadseg_dist.build_model so checkpoints can rebuild them")
    n = int(model.num_classes)
    default_names = n == labels.NUM_CLASSES
    return {
        "format": FORMAT,
        "arch": model.arch,
        "arch_kwargs": json.loads(json.dumps(model.arch_kwargs)),
        "num_classes": n,
        "class_names": list(labels.CLASSES) if default_names else [f"class_{i}" for i in range(n)],
        "palette": [list(c) for c in labels.PALETTE] if default_names else None,
        "normalization": {"mean": list(labels.MEAN), "std": list(labels.STD)},
        "input_size": [int(v) for v in input_size] if input_size else None,
        "epoch": int(epoch),
        "metrics": json.loads(json.dumps(metrics or {}, default=float)),
        "train_config": scrub(train_config or {}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "roadseg_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(url: str, model: nn.Module, *, epoch: int = 0, metrics: dict | None = None,
                    train_config: Any = None, input_size: tuple[int, int] | list[int] | None = None,
                    train_state: dict | None = None) -> None:
    """Write a checkpoint directory at ``url`` (local dir or s3:// prefix); meta.json goes last."""
    meta = meta_for(model, epoch=epoch, metrics=metrics, train_config=train_config, input_size=input_size)
    # Overwriting? Take the old meta.json away first, so a crash mid-write leaves an unfinished dir.
    storage.remove(storage.join(url, META_FILE))
    for name, data in weights.files(unwrap(model), meta, _torch_bytes).items():
        storage.write_bytes(storage.join(url, name), data)
    if train_state is not None:
        storage.write_bytes(storage.join(url, TRAIN_STATE_FILE), _torch_bytes(train_state))
    storage.write_text(storage.join(url, META_FILE), json.dumps(meta, indent=2) + "\n")
    log.info("checkpoint (epoch %d, %s) written to %s", epoch, meta["arch"], storage.redact(url))


# --- finding ---------------------------------------------------------------------------------------

def _parse_meta(url: str) -> dict:
    try:
        meta = json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise CheckpointError(f"{storage.redact(url)} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{storage.redact(url)} is corrupt (not JSON: {exc}); "
                              "re-save the checkpoint or pick another one") from None
    if not isinstance(meta, dict) or "arch" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"{storage.redact(url)} is not a roadseg checkpoint description "
                              "(no 'arch'/'num_classes')")
    fmt = meta.get("format", FORMAT)
    if fmt != FORMAT:
        raise CheckpointError(f"{storage.redact(url)} has format {fmt!r}; this roadseg_dist "
                              f"{__version__} reads {FORMAT!r}")
    check_meta_limits(meta, storage.redact(url))
    return meta


# A meta.json is input: a hostile one must not make us build a model of any size it likes.
META_LIMITS = {"num_classes": (1, 1024), "base_channels": (1, 128), "decoder_channels": (1, 1024),
               "input_size": (1, 16384)}


def check_meta_limits(meta: dict, shown: str) -> None:
    """Raise CheckpointError when meta.json's architecture arguments are out of range."""
    def bounded(name: str, value: Any, limits: tuple[int, int]) -> None:
        lo, hi = limits
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CheckpointError(f"{shown}: {name}={value!r} is outside {lo}..{hi}; this meta.json is "
                                  "damaged or not from roadseg_dist")

    kwargs = meta.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict) or len(json.dumps(kwargs)) > 4096:
        raise CheckpointError(f"{shown}: arch_kwargs must be a small mapping, got {type(kwargs).__name__}")
    bounded("num_classes", meta.get("num_classes"), META_LIMITS["num_classes"])
    for name, value in kwargs.items():
        values = value if isinstance(value, list) else [value]
        if name in META_LIMITS and len(values) <= 8:
            for v in values:
                bounded(name, v, META_LIMITS[name])
        elif name in META_LIMITS:
            raise CheckpointError(f"{shown}: {name} has {len(values)} entries, at most 8 are allowed")
    size = meta.get("input_size")
    if size is not None:
        if not isinstance(size, list) or len(size) != 2:
            raise CheckpointError(f"{shown}: input_size must be [height, width], got {size!r}")
        for v in size:
            bounded("input_size", v, META_LIMITS["input_size"])


def _rank(meta: dict) -> tuple:
    miou = (meta.get("metrics") or {}).get("val_miou")
    miou = float(miou) if isinstance(miou, (int, float)) and miou == miou else float("-inf")
    return miou, int(meta.get("epoch") or 0)


def resolve_checkpoint(url: str, pick: str = "best") -> str:
    """A checkpoint dir -> itself; a run dir -> its best (``pick="best"``) or ``"latest"`` checkpoint.

    A run dir holds its checkpoint directories directly (``RUN/checkpoint_*/meta.json``); a folder
    of several runs is refused, listing them: picking "the best of any run below" would mix runs of
    other data or models (and trip on any damaged one). Best = highest ``metrics.val_miou``, ties
    broken by the later epoch. Unfinished checkpoint directories (no meta.json) are skipped.
    """
    if pick not in ("best", "latest"):
        raise ValueError(f"pick must be 'best' or 'latest', not {pick!r}")
    url = storage.normalize(url)
    shown = storage.redact(url)
    if storage.exists(storage.join(url, META_FILE)):
        return url
    if not storage.exists(url):
        raise CheckpointError(f"no checkpoint or run directory at {shown}")
    for name in WEIGHTS_FILES:
        if storage.exists(storage.join(url, name)):
            raise CheckpointError(f"{shown} has {name} but no {META_FILE}: the checkpoint was not "
                                  "finished (interrupted save); use an earlier checkpoint")
    found = _checkpoint_dirs_below(url)
    candidates = []
    for ckpt in found.get(url, []):
        meta = _parse_meta(storage.join(ckpt, META_FILE))
        rank = _rank(meta) if pick == "best" else (int(meta.get("epoch") or 0),)
        candidates.append((rank + (ckpt,), ckpt))
    if not candidates and found:
        runs = sorted(run[len(url) + 1:] for run in found)
        listed = ", ".join(runs[:10]) + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")
        raise CheckpointError(f"{shown} is not a run or checkpoint directory but holds {len(runs)} run(s): "
                              f"{listed}; pick one, e.g. {shown}/{runs[0]}")
    if not candidates:
        raise CheckpointError(f"{shown} holds no finished checkpoint: expected {META_FILE} there, or "
                              f"checkpoint_*/{META_FILE} below it (a training run directory)")
    chosen = max(candidates)[1]
    log.info("%s: using %s checkpoint %s of %d", shown, pick, chosen.rsplit("/", 1)[-1], len(candidates))
    return chosen


def _checkpoint_dirs_below(url: str) -> dict[str, list[str]]:
    """{run dir: its finished checkpoint dirs} for every ``*/checkpoint*/meta.json`` under ``url``."""
    runs: dict[str, list[str]] = {}
    for f in storage.list_files(url):
        parts = f.rsplit("/", 2)
        if len(parts) == 3 and parts[2] == META_FILE and parts[1].startswith("checkpoint"):
            runs.setdefault(parts[0], []).append(f"{parts[0]}/{parts[1]}")
    return runs


def input_normalization(meta: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's input normalisation as 0-1 scale (mean, std) (ImageNet's when absent)."""
    norm = meta.get("normalization") or {}
    mean = tuple(float(v) for v in norm.get("mean", labels.MEAN))
    std = tuple(float(v) for v in norm.get("std", labels.STD))
    if max(mean) > 1.0:  # given on the 0-255 scale
        mean, std = tuple(v / 255 for v in mean), tuple(v / 255 for v in std)
    return mean, std


def read_meta(url: str) -> dict:
    """meta.json of a checkpoint (or of a run's best checkpoint), with ``checkpoint`` = its URL."""
    ckpt = resolve_checkpoint(url)
    meta = _parse_meta(storage.join(ckpt, META_FILE))
    meta["checkpoint"] = ckpt
    return meta


# --- loading ---------------------------------------------------------------------------------------

def _load_torch(url: str, what: str) -> Any:
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise CheckpointError(f"{storage.redact(url)} is missing: the checkpoint is incomplete") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, ... all mean "corrupt"
        raise CheckpointError(f"{storage.redact(url)} is corrupt ({what} unreadable: {type(exc).__name__}: "
                              f"{str(exc)[:200]}); re-save it or pick another checkpoint") from None


def weights_url(ckpt: str) -> str:
    """The weights file ``read_weights`` reads in a resolved checkpoint dir: model.safetensors, else model.pt
    (a checkpoint of an earlier roadseg_dist); the first name when neither exists (it is then missing)."""
    for name in WEIGHTS_FILES:
        if storage.exists(storage.join(ckpt, name)):
            return storage.join(ckpt, name)
    return storage.join(ckpt, WEIGHTS_FILES[0])


def read_weights(url: str) -> dict:
    """The weights of a checkpoint (or of a run's best checkpoint) as the model's state dict (``net.*``)."""
    path = weights_url(resolve_checkpoint(url))
    if path.endswith(weights.SAFETENSORS):
        try:
            return weights.from_safetensors(storage.read_bytes(path))
        except FileNotFoundError:
            raise CheckpointError(f"{storage.redact(path)} is missing: the checkpoint is incomplete") from None
        except Exception as exc:  # noqa: BLE001 - a cut or foreign file: safetensors' own errors
            raise CheckpointError(f"{storage.redact(path)} is corrupt (weights unreadable: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}); re-save it or pick another checkpoint") from None
    state = _load_torch(path, "weights")
    if not isinstance(state, dict):
        raise CheckpointError(f"{storage.redact(path)} holds a {type(state).__name__}, not a state dict")
    return state


def load_model(url: str, device: str | torch.device = "cpu",
               num_classes: int | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint dir or a run dir (its best checkpoint) -> (model in eval mode, meta).

    ``num_classes``, when given, is what the caller expects: a checkpoint with another count is refused.
    """
    from roadseg_dist.models.zoo import build_model, list_models

    meta = read_meta(url)
    ckpt = meta["checkpoint"]
    shown = storage.redact(ckpt)
    if num_classes is not None and int(meta["num_classes"]) != int(num_classes):
        raise CheckpointError(f"{shown} predicts {meta['num_classes']} classes but {num_classes} were "
                              "requested; use a checkpoint trained for that class set")
    if meta["arch"] not in list_models():
        raise CheckpointError(f"{shown} is a {meta['arch']!r} model, an architecture this roadseg_dist "
                              f"{__version__} does not know (known: {', '.join(list_models())}); "
                              f"upgrade roadseg_dist or use another checkpoint")
    try:
        model = build_model(meta["arch"], num_classes=int(meta["num_classes"]),
                            **(meta.get("arch_kwargs") or {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{shown}: cannot rebuild {meta['arch']!r} from arch_kwargs "
                              f"{meta.get('arch_kwargs')}: {exc}") from None
    state = read_weights(ckpt)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        head = state.get("net.head.weight", state.get("net.segmentation_head.0.weight"))
        hint = (f" (its weights have {head.shape[0]} output classes, meta.json says {meta['num_classes']})"
                if head is not None and head.shape[0] != int(meta["num_classes"]) else "")
        raise CheckpointError(f"{storage.redact(weights_url(ckpt))} does not match its meta.json{hint}: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    return model.to(device).eval(), meta


def load_train_state(url: str) -> dict | None:
    """train_state.pt of a checkpoint (of a run dir: its LATEST checkpoint, for resuming) or None."""
    ckpt = resolve_checkpoint(url, pick="latest")
    path = storage.join(ckpt, TRAIN_STATE_FILE)
    if not storage.exists(path):
        return None
    state = _load_torch(path, "training state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{storage.redact(path)} holds a {type(state).__name__}, not a dict")
    return state
