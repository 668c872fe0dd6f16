"""``InferSettings``: every knob of ``roadseg infer``, one field per CLI flag / YAML key."""
from __future__ import annotations

import dataclasses

from roadseg_dist import settings
from roadseg_dist.infer.video_out import VIDEO_CODECS
from roadseg_dist.render import OUTPUTS
from roadseg_dist.settings import SettingsError, field, parse_list, parse_size
from roadseg_dist.ops.watchdog import DEFAULT_STALL_TIMEOUT

SPLIT_MODES = ("auto", "always", "never")
OUTPUT_KINDS = tuple(OUTPUTS)  # render.OUTPUTS: the one table of output kinds
DEFAULT_OUTPUTS = tuple(k for k, o in OUTPUTS.items() if o.default)


@dataclasses.dataclass
class InferSettings:
    checkpoint: str = field(argument=True, path=True, help="checkpoint or training run directory (best checkpoint)")
    input: str = field(argument=True, path=True, help="a video, a folder/prefix of videos or images, or a list file")
    output: str = field(argument=True, path=True, help="where the outputs go (local path, file:// or s3://)")
    size: tuple | None = field(None, parse=parse_size,
                               help="model input size HxW; default: the checkpoint's input_size")
    every: int = field(1, help="segment every N-th source frame")
    fps: float | None = field(None, help="segment about F frames per second (sets the stride from the source rate)")
    batch_size: int = field(8, help="frames per model call")
    outputs: tuple = field(DEFAULT_OUTPUTS, parse=parse_list,
                           help=f"what to write, from {','.join(OUTPUT_KINDS)}")
    video_codec: str = field("h264", choices=VIDEO_CODECS, help="overlay.mp4 codec: h264 (browsers play it) or mjpeg (the overlay "
                                           "JPEGs muxed as they are, no encode)")
    segment_frames: int = field(300, help="frames per frame range of a split source (its unit of parallel "
                                          "decoding and resume)")
    split: str = field("auto", choices=SPLIT_MODES,
                       help="cut sources into frame ranges: auto = only those big enough to hold up the end of "
                            "the run (short clips stay one unit each), always, or never")
    gpu: bool = field(False, flag="--gpu/--cpu", help="run the model on GPU actors (num_gpus=1 each)")
    amp: str = field("auto", choices=("auto", "off", "bf16", "fp16"),
                     help="model precision: auto = fp16 on GPUs, bf16 on CPUs that have it in hardware "
                          "(AVX512-BF16, AMX; ~2x fp32), else fp32; off = always fp32")
    channels_last: bool = field(False, help="run the model in NHWC memory format (faster on GPUs)")
    compile: bool = field(False, help="torch.compile the model in each actor (slow first batches)")
    concurrency: int | None = field(None, help="number of model actors; default: one per GPU, or sized to "
                                              "the CPUs (see infer/sizing.size_actors)")
    actor_cpus: float | None = field(None, help="CPUs reserved per model actor (on CPU also its torch threads); "
                                                "default: 1 with --gpu, else ~3/4 of the CPUs over the actors")
    confidence: bool = field(True, flag="--confidence/--no-confidence",
                             help="per-frame confidence columns in the stats (mean top-class probability, share of "
                                  "uncertain pixels), computed with the masks")
    uncertain_below: float = field(0.5, help="a pixel is uncertain when its top-class probability is below this "
                                             "(the stats' uncertain column: the share of such pixels)")
    overwrite: bool = field(False, help="redo everything instead of resuming")
    alpha: float = field(0.5, help="weight of the class colours in the overlay")
    jpeg_quality: int = field(85, help="JPEG quality of overlays and originals")
    address: str | None = field(None, help="Ray cluster address; default: RAY_ADDRESS or a local Ray")
    num_cpus: float | None = field(None, help="CPUs of the local Ray (default: all)")
    view: bool = field(True, help="write the results page OUTPUT/index.html at the end (roadseg view)")
    stall_timeout: float = field(DEFAULT_STALL_TIMEOUT, metavar="SECONDS",
                                 help="fail with a diagnosis when no frame is segmented for this long (0: never)")

    def validate(self) -> None:
        unknown = [o for o in self.outputs if o not in OUTPUT_KINDS]
        if unknown or not self.outputs:
            raise SettingsError(
                f"--outputs {','.join(self.outputs)!r}: choose from {','.join(OUTPUT_KINDS)}")
        settings.at_least(self, 1, "every", "batch_size", "segment_frames", "concurrency", "num_cpus")
        settings.at_least(self, 0, "stall_timeout")
        settings.positive(self, "actor_cpus", "fps")
        settings.within(self, "alpha", 0.0, 1.0)
        settings.within(self, "uncertain_below", 0.0, 1.0)
        settings.within(self, "jpeg_quality", 1, 100)
        if self.amp == "fp16" and not self.gpu:
            raise SettingsError("--amp fp16 needs --gpu; on a CPU use --amp bf16 or --amp off")
        if self.fps is not None and self.every != 1:
            raise SettingsError("give either --every or --fps, not both")

    def writes(self, kind: str) -> bool:
        """Asked for, or needed by a kind asked for (overlay.mp4 is made of the overlay frames)."""
        return kind in self.outputs or any(kind in OUTPUTS[o].needs for o in self.outputs if o in OUTPUTS)

    def stride(self, source_fps: float) -> int:
        """Source frames per segmented frame."""
        if self.fps is None or not source_fps or source_fps <= 0:
            return self.every
        return max(1, round(source_fps / self.fps))
