"""``TrainSettings``: every knob of ``roadseg train``, one field per CLI flag and YAML key."""
from __future__ import annotations

import dataclasses

from roadseg_dist import settings
from roadseg_dist.ops.resources import AUTO, parse_cpus
from roadseg_dist.settings import SettingsError, field, parse_list, parse_size
from roadseg_dist.ops.watchdog import DEFAULT_STALL_TIMEOUT

LOSSES = ("ce", "ohem", "dice_ce")  # the names train/losses.build_criterion knows


@dataclasses.dataclass
class TrainSettings:
    data: tuple = field(parse=parse_list, path=True,
                        help="Shard folder(s) (local, file:// or s3://), comma-separated: the first holds "
                             "train-*.tar and val-*.tar with indexes (validation, class weights); the others "
                             "add their train split (e.g. newly labelled frames), mixed by --data-weights.")
    storage: str = field(help="Where run directories live (local, file:// or s3://); the run is STORAGE/NAME.",
                         path=True)
    name: str = field(help="Run name: the run directory is STORAGE/NAME.")
    data_weights: tuple = field((), parse=lambda v: tuple(float(x) for x in parse_list(v)), metavar="W,W,...",
                                help="Samples of each --data set per epoch, as a multiple of its size (default "
                                     "1 each): 0.5 takes a random half, 3 each sample three times (each copy "
                                     "its own augmentation).")
    init_from: str | None = field(None, path=True,
                                  help="Start from this checkpoint's weights (or a run's best): fine-tuning. The "
                                       "optimizer, schedule and epochs start anew; --model must match it.")
    model: str = field("unet", help="Model name from the zoo (roadseg models).")
    pretrained: bool = field(False, help="Start the encoder from pretrained weights.")
    base_channels: int | None = field(None, help="Width of the classic U-Net (unet only; smaller is faster).")
    epochs: int = field(10, help="Total epochs of the run (a resumed run continues up to this number).")
    batch_size: int = field(8, help="Images per worker per step (global batch = batch size x workers).")
    lr: float = field(1e-3, help="Peak learning rate, reached after the warm-up.")
    optimizer: str = field("adamw", choices=("adamw", "sgd"), help="Optimizer.")
    weight_decay: float = field(1e-4, help="Weight decay.")
    momentum: float = field(0.9, help="SGD momentum.")
    warmup_epochs: float = field(0.0, help="Linear warm-up length in epochs (fractions allowed).")
    poly_power: float = field(0.9, help="Exponent of the poly learning-rate decay.")
    class_weights: bool = field(False, help="Weight the loss by the class weights of the train split's stats.")
    loss: str = field("ce", choices=LOSSES,
                      help="Loss: ce (cross-entropy), ohem (CE over the hard pixels only, for thin classes), "
                           "dice_ce (CE + Dice).")
    ohem_thresh: float = field(0.7, help="ohem: pixels whose true-class probability is below this are hard.")
    ohem_min_kept: int = field(100000, help="ohem: at least this many hardest pixels per image are kept.")
    dice_weight: float = field(1.0, help="dice_ce: weight of the Dice term next to the CE mean.")
    crop: tuple = field((512, 1024), parse=parse_size, help="Training crop HxW after random scaling.")
    scale_range: tuple = field((0.5, 2.0), parse=lambda v: _pair(v, float, "scale_range"), metavar="MIN,MAX",
                               help="Random scale range MIN,MAX applied before cropping.")
    flip: bool = field(True, help="Random horizontal flip.")
    jitter: float = field(0.2, help="Photometric jitter strength (brightness/contrast/saturation), 0 = off.")
    num_workers: int = field(2, help="Training workers (DDP processes; one GPU each with --gpu).")
    gpu: bool = field(False, flag="--gpu/--cpu", help="Train on one GPU per worker, or on CPUs.")
    amp: str = field("bf16", choices=("bf16", "fp16", "off"), help="Mixed precision on GPU (ignored on CPU).")
    channels_last: bool = field(False, help="Train in NHWC memory format (faster convolutions on GPUs with AMP).")
    compile: bool = field(False, help="torch.compile the model (slow first steps, faster later ones).")
    cpus_per_worker: float | str = field(
        AUTO, parse=parse_cpus, metavar="CPUS|auto",
        help="CPUs reserved per training worker; auto: on CPUs the workers share half the CPUs (the decode/"
             "augment tasks get the other half), on GPUs each worker takes 2 and the tasks get the rest.")
    placement_strategy: str = field("PACK", choices=("PACK", "SPREAD", "STRICT_SPREAD"),
                                    help="How workers are placed on nodes: PACK fills nodes first, SPREAD "
                                         "spreads them (one GPU per node clusters want SPREAD).")
    ingest_cpus: float | str = field(
        AUTO, parse=parse_cpus, metavar="CPUS|auto",
        help="Decode/augment CPUs per training worker (Ray Data tasks anywhere in the cluster); auto: the "
             "CPUs the workers leave, shared by them.")
    prefetch_batches: int | str = field(AUTO, parse=lambda v: _auto_int(v, "prefetch_batches"), metavar="N|auto",
                                        help="Batches each worker fetches ahead; auto: 4 on GPUs, 2 on CPUs.")
    shuffle_buffer: int = field(64, help="Samples in each worker's local shuffle buffer.")
    val_batch_size: int = field(4, help="Images per validation batch (full resolution).")
    keep: int = field(3, help="Keep the last K checkpoints (the best by val mIoU is kept as well).")
    max_failures: int = field(0, help="Restart from the latest checkpoint this many times when a worker dies.")
    resume: bool = field(False, help="Continue STORAGE/NAME from its latest checkpoint.")
    seed: int = field(0, help="Seed of model init, epoch order and augmentation: runs are repeatable.")
    address: str | None = field(None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    num_cpus: int | None = field(None, help="CPUs of the local Ray (default: all cores).")
    stall_timeout: float = field(DEFAULT_STALL_TIMEOUT, metavar="SECONDS",
                                 help="Fail with a diagnosis when no batch or epoch arrives for this long (0: never).")
    mlflow: str | None = field(None, help="Also log params, metrics and artifacts to this MLflow tracking URI "
                                          "(file:/path or http://server); TensorBoard files are always written.")
    mlflow_experiment: str = field("roadseg", help="MLflow experiment name (with --mlflow).")
    overlays: int = field(3, help="Val images shown with truth and prediction overlays in TensorBoard each epoch.")
    record_keys: bool = field(False, help="Debug: workers write the sample keys they see per epoch to the run dir.")

    def validate(self) -> None:
        if self.epochs < 1:
            raise SettingsError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise SettingsError("batch sizes must be >= 1")
        if self.num_workers < 1:
            raise SettingsError(f"num_workers must be >= 1, got {self.num_workers}")
        if self.lr <= 0:
            raise SettingsError(f"lr must be positive, got {self.lr}")
        if self.keep < 1:
            raise SettingsError(f"keep must be >= 1, got {self.keep}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise SettingsError(f"scale_range must be 0 < MIN <= MAX, got {lo},{hi}")
        if not 0 < self.ohem_thresh <= 1 or self.ohem_min_kept < 0:
            raise SettingsError(f"ohem_thresh must be in (0, 1] and ohem_min_kept >= 0, got "
                                f"{self.ohem_thresh}, {self.ohem_min_kept}")
        if self.overlays < 0:
            raise SettingsError(f"overlays must be >= 0, got {self.overlays}")
        if (not self.name.strip() or self.name in (".", "..") or any(c in self.name for c in "/\\\0")
                or len(self.name.encode()) > 255):
            raise SettingsError(f"name {self.name!r} must be one plain folder name (not . or .., "
                                "no '/' or '\\', at most 255 bytes)")
        settings.at_least(self, 0, "max_failures", "warmup_epochs", "weight_decay", "poly_power", "dice_weight",
                          "seed", "stall_timeout")
        settings.at_least(self, 1, "shuffle_buffer", "num_cpus")
        if self.ingest_cpus != AUTO:
            settings.positive(self, "ingest_cpus")
        if not self.data:
            raise SettingsError("--data: give at least one shard folder")
        if self.data_weights and len(self.data_weights) != len(self.data):
            raise SettingsError(f"--data-weights: {len(self.data_weights)} weight(s) for {len(self.data)} --data "
                                "set(s): give one per set, in the same order")
        if any(not 0 < w < float("inf") for w in self.data_weights):
            raise SettingsError(f"--data-weights must be positive numbers, got {list(self.data_weights)}")
        settings.within(self, "jitter", 0, 1)
        settings.within(self, "momentum", 0, 1)
        settings.within(self, "base_channels", 1, 128)  # what a checkpoint's meta.json may hold
        from roadseg_dist.models.zoo import list_models  # torch: only where a train is built

        if self.model not in list_models():
            raise SettingsError(f"--model {self.model!r} is not in the zoo; choose one of {', '.join(list_models())} "
                                "(roadseg models)")

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # built directly, not through settings.build: one folder or a list
            self.data = parse_list(self.data)

    @property
    def main_data(self) -> str:
        """The first --data set: its val split and class weights are the run's."""
        return self.data[0]

    @property
    def weights(self) -> tuple:
        """The sampling weight of each --data set (1 each unless given); () when there is one set at 1."""
        weights = tuple(self.data_weights) or (1.0,) * len(self.data)
        return () if weights == (1.0,) else weights

    def to_config(self) -> dict:
        """The settings as a plain dict for the workers; ``meta.json`` gets ``checkpoint.scrub`` of it."""
        return settings.to_dict(self)


def _auto_int(value, name):
    if value is None or str(value).strip().lower() == AUTO:
        return AUTO
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected a whole number or auto, got {value!r}") from None
    if n < 1:
        raise SettingsError(f"{name} must be >= 1 (or auto), got {n}")
    return n


def _pair(value, cast, name):
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
    else:
        parts = list(value)
    if len(parts) != 2:
        raise SettingsError(f"{name}: expected two numbers MIN,MAX, got {value!r}")
    return tuple(cast(p) for p in parts)
