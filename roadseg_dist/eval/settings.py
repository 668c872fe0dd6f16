"""The settings of the evaluation stage: ``EvalSettings`` (``roadseg eval``) and ``CompareSettings``
(``roadseg compare``), one field per CLI flag / YAML key."""
from __future__ import annotations

import dataclasses

from roadseg_dist import storage
from roadseg_dist.ops.resources import AUTO, parse_cpus
from roadseg_dist.ops.watchdog import DEFAULT_STALL_TIMEOUT
from roadseg_dist.settings import SettingsError, at_least, field, parse_list, parse_size


@dataclasses.dataclass
class EvalSettings:
    checkpoint: str = field(argument=True, path=True, help="checkpoint or training run directory (its best checkpoint)")
    data: str = field(path=True, help="shard folder (local, file:// or s3://) holding SPLIT-*.tar and SPLIT-index.parquet")
    split: str = field("val", help="which split of the shard folder to score")
    out: str | None = field(None, path=True, help="where eval.json, eval.md and iou.png go; default: CHECKPOINT/eval-SPLIT")
    save_preds: str | None = field(None, path=True, help="also write the predicted train-id masks as DIR/<key>.png")
    size: tuple | None = field(None, parse=parse_size,
                               help="run the model at HxW and upsample its logits to each label's "
                                    "resolution; default: at the label's full resolution")
    limit: int | None = field(None, help="score only the first N samples of the split (quick checks)")
    batch_size: int = field(4, help="images per model call")
    workers: int = field(2, help="model actors scoring in parallel")
    cpus_per_worker: float | str = field(AUTO, parse=parse_cpus, metavar="CPUS|auto",
                                         help="CPUs reserved per model actor (also its torch threads); auto: "
                                              "what the read tasks leave, shared by the actors")
    gpu: bool = field(False, flag="--gpu/--cpu", help="one GPU per model actor, or CPUs (fp16 autocast on GPU, as infer)")
    channels_last: bool = field(False, help="run the model in NHWC memory format (faster on GPUs)")
    compile: bool = field(False, help="torch.compile the model in each actor (slow first batches)")
    address: str | None = field(None, help="Ray cluster address; default: RAY_ADDRESS or a local Ray")
    num_cpus: int | None = field(None, help="CPUs of the local Ray (default: all cores)")
    stall_timeout: float = field(DEFAULT_STALL_TIMEOUT, metavar="SECONDS",
                                 help="fail with a diagnosis when no batch is scored for this long (0: never)")

    def validate(self) -> None:
        for name in ("batch_size", "workers"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise SettingsError(f"--limit must be at least 1, got {self.limit}")
        at_least(self, 1, "num_cpus")
        at_least(self, 0, "stall_timeout")

    def output_dir(self) -> str:
        return self.out or storage.join(self.checkpoint, f"eval-{self.split}")


@dataclasses.dataclass
class CompareSettings:
    data: str = field(path=True, help="shard folder (local, file:// or s3://) holding SPLIT-*.tar and SPLIT-index.parquet")
    models: tuple = field((), parse=parse_list, path=True,
                          help="checkpoints or run directories (on the command line: CKPT_OR_RUN...)")
    split: str = field("val", help="which split to score")
    size: tuple | None = field(None, parse=parse_size,
                               help="input size HxW of the speed measurement; default: the split's most "
                                    "common image size")
    speed_batch: int = field(1, help="frames per model call in the speed measurement")
    speed_seconds: float = field(3.0, help="time spent measuring each model's speed")
    limit: int | None = field(None, help="score only the first N samples of the split")
    out: str = field("compare", path=True, help="where compare.json, compare.md and compare.png go")
    batch_size: int = field(4, help="images per model call while scoring")
    workers: int = field(2, help="model actors scoring in parallel")
    cpus_per_worker: float | str = field(AUTO, parse=parse_cpus, metavar="CPUS|auto",
                                         help="CPUs reserved per model actor; auto: what the read tasks leave, "
                                              "shared by the actors")
    gpu: bool = field(False, flag="--gpu/--cpu", help="score and time on GPU (fp16 autocast, as infer), or on CPU")
    channels_last: bool = field(False, help="run the models in NHWC memory format (faster on GPUs)")
    compile: bool = field(False, help="torch.compile the models (timed after the compiling warm-up)")
    address: str | None = field(None, help="Ray cluster address; default: RAY_ADDRESS or a local Ray")
    num_cpus: int | None = field(None, help="CPUs of the local Ray (default: all cores)")
    stall_timeout: float = field(DEFAULT_STALL_TIMEOUT, metavar="SECONDS",
                                 help="fail with a diagnosis when no batch is scored for this long (0: never)")

    def validate(self) -> None:
        if not self.models:
            raise SettingsError("name at least one checkpoint or run directory to compare")
        if self.speed_batch < 1 or self.batch_size < 1 or self.workers < 1:
            raise SettingsError("--speed-batch, --batch-size and --workers must be at least 1")
        if self.speed_seconds <= 0:
            raise SettingsError(f"--speed-seconds must be positive, got {self.speed_seconds}")
        at_least(self, 1, "limit", "num_cpus")
        at_least(self, 0, "stall_timeout")
