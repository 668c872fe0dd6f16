"""Data and models: ``roadseg synth``, ``shard``, ``models``, ``export``."""
from __future__ import annotations

import click

from roadseg_dist import settings
from roadseg_dist.cli import build, main, result, results_console
from roadseg_dist.shard.settings import ShardSettings
from roadseg_dist.data.synth import SynthSettings
from roadseg_dist.models.export import ExportSettings

# --- data (issue: sharding) ----------------------------------------------------------------------


@main.command()
@settings.cli_options(SynthSettings)
def synth(config, **values):
    """Write a synthetic BDD100K-like dataset (images, masks, colormaps, driving clips) under ROOT.

    Same layout as the real BDD100K 10K release, so every other command runs on it unchanged.
    """
    from roadseg_dist import storage
    from roadseg_dist.data import synth as synth_mod

    s = build(SynthSettings, config, **values)
    synth_mod.generate(s.root, train=s.train, val=s.val, height=s.height, width=s.width, videos=s.videos,
                       video_frames=s.video_frames, fps=s.fps, seed=s.seed, detail=s.detail, progress=True,
                       light=s.light, clip_light=s.clip_light)
    result(f"wrote {s.train} train + {s.val} val images ({s.height}x{s.width}) and {s.videos} clip(s) "
               f"with their frames' labels (video_labels/) under {storage.redact(storage.normalize(s.root))}")


@main.command()
@settings.cli_options(ShardSettings)
def shard(config, **values):
    """Shard one split of a BDD100K root (ROOT) into WebDataset tar files under DEST, with Ray tasks.

    Writes DEST/SPLIT-000000.tar ..., then DEST/SPLIT-stats.json and, last, DEST/SPLIT-index.parquet.
    A re-run skips shards that are already complete and correct. Bad input (unpaired files, size
    mismatches, label values outside 0-18/255, unreadable files) is listed and nothing under DEST
    is changed: a dataset already there stays as it was.
    """
    from roadseg_dist.shard import job as shard_job

    s = build(ShardSettings, config, **values)
    summary = shard_job.run(s)
    verified = f", verified {summary['verified_shards']} shard(s)" if "verified_shards" in summary else ""
    result(f"{summary['split']}: {summary['samples']} samples in {summary['shards']} shard(s) under "
               f"{summary['dest']} ({summary['written']} written, {summary['skipped']} already complete"
               f"{verified}); {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s")
# --- models (issue: model zoo) -------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per model) instead of a table.")
def models(as_json: bool) -> None:
    """List the model zoo: parameters, GFLOPs of one 720x1280 frame, encoder, ImageNet weights file.

    GFLOPs count 2 per multiply-add (torch.utils.flop_counter) and are cached after the first run.
    """
    import json as json_mod
    import os

    from roadseg_dist.models import pretrained, zoo

    rows = []
    for name in zoo.list_models():
        info = dict(zoo.model_info(name))
        path, present = zoo.pretrained_weights_file(name)
        info.update(pretrained_weights=path, pretrained_available=present)
        rows.append(info)
    if as_json:
        result(json_mod.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="roadseg model zoo", caption=f"ImageNet weights are read from {pretrained.torch_hub_dir()}"
                  " (or build_model(..., weights=PATH)); GFLOPs: one 720x1280 frame, 2 per multiply-add")
    for col, justify in (("name", "left"), ("params", "right"), ("GFLOPs", "right"),
                         ("encoder", "left"), ("ImageNet weights", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "ImageNet weights", overflow="fold")
    for r in rows:
        weights = "-" if r["pretrained_weights"] is None else (
            ("found " if r["pretrained_available"] else "missing ") + os.path.basename(r["pretrained_weights"]))
        table.add_row(r["name"], f"{r['parameters'] / 1e6:.1f}M", f"{r['gflops_720x1280']:.0f}",
                      r["encoder"] or "- (scratch)", weights)
    results_console().print(table)


@main.command("export")
@settings.cli_options(ExportSettings)
def export_cmd(config, **values):
    """Export CHECKPOINT (a checkpoint dir, or a run dir: its best checkpoint) to OUT.

    ONNX (onnxruntime; torch.onnx's dynamo exporter), torch.export (.pt2) or TorchScript, with dynamic
    batch, height and width; --uint8-input puts the normalisation in the graph, so decoded RGB frames go
    straight in. The export is run at an awkward size and compared with the eager model before OUT is
    written.
    """
    from roadseg_dist import storage
    from roadseg_dist.models.export import export_checkpoint

    s = build(ExportSettings, config, **values)
    try:
        report = export_checkpoint(s.checkpoint, s.out, s.format, uint8_input=s.uint8_input, opset=s.opset,
                                   check=s.check, tolerance=s.tolerance)
    except (ValueError, RuntimeError, OSError) as exc:  # CheckpointError, bad URL, parity, S3 access, extra
        raise click.ClickException(storage.redact(str(exc))) from None
    parity = (f"; max |exported - eager| = {report['max_abs_diff']:.2g} at "
              f"{report['checked_at'][0]}x{report['checked_at'][1]}") if "max_abs_diff" in report else ""
    takes = "uint8 RGB (N, H, W, 3)" if s.uint8_input else "normalised float (N, 3, H, W)"
    result(f"exported {report['arch']} from {report['checkpoint']} to {report['out']} "
           f"({report['format']}, {report['bytes'] / 1e6:.1f} MB, takes {takes}){parity}")
