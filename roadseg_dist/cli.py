"""The ``roadseg`` command line: one subcommand per job, each a thin call into the package.

Options come from each job's settings dataclass (``settings.cli_options``), so a flag, its YAML key
and the dataclass field are the same name. The package raises its own errors (``errors.py``); this
module alone turns them into click errors, in ``Command.invoke`` below.
"""
from __future__ import annotations

import logging
import sys
import traceback

import click

from roadseg_dist import __version__, settings


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors whose message is meant for the user as it is (exit code 1)."""
    from roadseg_dist.data.bdd100k import DatasetError
    from roadseg_dist.errors import JobError
    from roadseg_dist.infer.pipeline import InputError
    from roadseg_dist.models.checkpoint import CheckpointError
    from roadseg_dist.images import ImageTooLarge
    from roadseg_dist.resources import ResourceError
    from roadseg_dist.retries import StorageError
    from roadseg_dist.watchdog import StallError

    return (DatasetError, CheckpointError, InputError, JobError, ResourceError, StallError, StorageError,
            ImageTooLarge, FileNotFoundError)


class Command(click.Command):
    """A subcommand whose settings errors are usage errors (exit 2) and whose user errors are
    ``Error: message`` (exit 1); anything else reaches the group's last line of defence."""

    def invoke(self, ctx: click.Context):
        from roadseg_dist import storage

        try:
            return super().invoke(ctx)
        except settings.SettingsError as exc:
            raise click.UsageError(str(exc), ctx) from None
        except _user_errors() as exc:
            raise click.ClickException(storage.redact(str(exc))) from None


class Group(click.Group):
    """Every error leaves redacted: a click error's message, and any unexpected exception as one
    line (its traceback, redacted too, only with -v), so no credential-bearing URL is echoed."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        from roadseg_dist.storage import redact

        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = redact(exc.message)
            raise
        except (click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                click.echo(redact(traceback.format_exc()), err=True)
            raise click.ClickException(redact(f"{type(exc).__name__}: {exc}") + "\n  (unexpected; "
                                       "run with -v for the traceback, secrets redacted)") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="roadseg")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """Train BDD100K road-scene segmentation on Ray and segment video archives in bulk."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# --- data (issue: sharding) ----------------------------------------------------------------------

from roadseg_dist.data.shard_job import ShardSettings  # noqa: E402 - each section owns its imports
from roadseg_dist.data.synth import SynthSettings  # noqa: E402


@main.command()
@settings.cli_options(SynthSettings)
def synth(config, **values):
    """Write a synthetic BDD100K-like dataset (images, masks, colormaps, driving clips) under ROOT.

    Same layout as the real BDD100K 10K release, so every other command runs on it unchanged.
    """
    from roadseg_dist import storage
    from roadseg_dist.data import synth as synth_mod

    s = settings.build(SynthSettings, config, **values)
    synth_mod.generate(s.root, train=s.train, val=s.val, height=s.height, width=s.width, videos=s.videos,
                       video_frames=s.video_frames, fps=s.fps, seed=s.seed, detail=s.detail, progress=True)
    click.echo(f"wrote {s.train} train + {s.val} val images ({s.height}x{s.width}) and {s.videos} clip(s) "
               f"under {storage.redact(storage.normalize(s.root))}")


@main.command()
@settings.cli_options(ShardSettings)
def shard(config, **values):
    """Shard one split of a BDD100K root (ROOT) into WebDataset tar files under DEST, with Ray tasks.

    Writes DEST/SPLIT-000000.tar ..., then DEST/SPLIT-stats.json and, last, DEST/SPLIT-index.parquet.
    A re-run skips shards that are already complete and correct. Bad input (unpaired files, size
    mismatches, label values outside 0-18/255, unreadable files) is listed and no index is written.
    """
    from roadseg_dist.data import shard_job

    s = settings.build(ShardSettings, config, **values)
    summary = shard_job.run_shard(s)
    verified = f", verified {summary['verified_shards']} shard(s)" if "verified_shards" in summary else ""
    click.echo(f"{summary['split']}: {summary['samples']} samples in {summary['shards']} shard(s) under "
               f"{summary['dest']} ({summary['written']} written, {summary['skipped']} already complete"
               f"{verified}); {summary['bytes'] / 1e6:.1f} MB in {summary['seconds']:.1f} s")
# --- models (issue: model zoo) -------------------------------------------------------------------

from roadseg_dist.models.export import ExportSettings  # noqa: E402 - each section owns its imports


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
        click.echo(json_mod.dumps(rows, indent=2))
        return
    from rich.console import Console
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
    Console().print(table)


@main.command("export")
@settings.cli_options(ExportSettings)
def export_cmd(config, **values):
    """Export CHECKPOINT (a checkpoint dir, or a run dir: its best checkpoint) to OUT.

    TorchScript (torch.jit.load) or ONNX (onnxruntime), with dynamic batch, height and width. The
    export is run at an awkward size and compared with the eager model before OUT is written.
    """
    from roadseg_dist import storage
    from roadseg_dist.models.export import export_checkpoint

    s = settings.build(ExportSettings, config, **values)
    try:
        report = export_checkpoint(s.checkpoint, s.out, s.format, opset=s.opset, check=s.check,
                                   tolerance=s.tolerance)
    except (ValueError, RuntimeError, OSError) as exc:  # CheckpointError, bad URL, parity, S3 access
        raise click.ClickException(storage.redact(str(exc))) from None
    parity = (f"; max |exported - eager| = {report['max_abs_diff']:.2g} at "
              f"{report['checked_at'][0]}x{report['checked_at'][1]}") if "max_abs_diff" in report else ""
    click.echo(f"exported {report['arch']} from {report['checkpoint']} to {report['out']} "
               f"({report['format']}, {report['bytes'] / 1e6:.1f} MB){parity}")

# --- train ---------------------------------------------------------------------------------------

from roadseg_dist.train.settings import TrainSettings  # noqa: E402 - each section owns its imports


@main.command()
@settings.cli_options(TrainSettings)
def train(config, **values):
    """Train a zoo model with Ray Train (DDP), streaming the shards of --data; the run goes to STORAGE/NAME.

    Prints one line per epoch and, at the end, the best val mIoU and where its checkpoint is.
    """
    from roadseg_dist.train import driver

    s = settings.build(TrainSettings, config, **values)
    driver.train(s)


@main.command()
@click.argument("storage_url", metavar="STORAGE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per run) instead of a table.")
def runs(storage_url: str, as_json: bool) -> None:
    """List the training runs under STORAGE (local, file:// or s3://): status, epochs, model, best mIoU.

    The status comes from each run's status.json: running (rank 0 is training, or the job died
    without a word), finished, or failed (the driver saw fit() fail); unknown for older runs.
    """
    import json as json_mod

    from roadseg_dist import storage
    from roadseg_dist.train import run as run_mod

    try:
        rows = run_mod.list_runs(storage_url)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot list runs under {storage.redact(storage_url)}: "
                                   f"{storage.redact(str(exc))}") from None
    if as_json:
        click.echo(json_mod.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no runs under {storage.redact(storage_url)}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs under {storage.redact(storage_url)}")
    for col, justify in (("run", "left"), ("status", "left"), ("epochs", "right"), ("model", "left"),
                         ("best val mIoU", "right"), ("best epoch", "right"), ("updated", "left")):
        table.add_column(col, justify=justify)
    colours = {"running": "yellow", "finished": "green", "failed": "red"}
    for r in rows:
        planned = f"/{r['planned_epochs']}" if r["planned_epochs"] else ""
        miou = f"{100 * r['best_val_miou']:.1f} %" if r["best_val_miou"] is not None else "-"
        status = f"[{colours.get(r['status'], 'white')}]{r['status']}[/]"
        table.add_row(r["name"], status, f"{r['epochs']}{planned}", r["model"] or "-", miou,
                      str(r["best_epoch"] or "-"), r["updated"] or "-")
    Console().print(table)

# --- infer ---------------------------------------------------------------------------------------

from roadseg_dist.infer.settings import InferSettings  # noqa: E402 - each section owns its imports

EXIT_SOME_INPUTS_FAILED = 3


@main.command()
@settings.cli_options(InferSettings)
def infer(config, **values):
    """Segment every frame of every video (or image folder) under INPUT with Ray Data; write under OUTPUT.

    Per source id (its path relative to INPUT): OUTPUT/ID/{mask,color,overlay,original}/NNNNNN.*
    and OUTPUT/ID/overlay.mp4; for the run: OUTPUT/frames.parquet and OUTPUT/report.json. A re-run
    resumes: only missing work is done. Exits 3 when some inputs failed (listed in report.json).
    """
    from roadseg_dist import storage
    from roadseg_dist.infer import pipeline

    s = settings.build(InferSettings, config, **values)
    report = pipeline.run(s)
    click.echo(f"{report['videos_done']}/{report['sources']} source(s) done "
               f"({report['videos_skipped']} already complete), {report['frames_this_run']} frame(s) "
               f"this run at {report['frames_per_second']:.2f} frames/s; report: "
               f"{storage.join(storage.redact(storage.normalize(s.output)), 'report.json')}")
    for f in report["failures"]:
        click.echo(f"FAILED {f['id']} ({f['input']}): {f['reason']}", err=True)
    if s.view:
        write_results_page(s.output)
    if report["failures"]:
        sys.exit(EXIT_SOME_INPUTS_FAILED)


def write_results_page(output: str) -> None:
    """The end of an infer run: its results page. The frames are already safe, so a page that cannot
    be written is a warning, not a failed run."""
    from roadseg_dist import storage
    from roadseg_dist.results.page import write_site

    try:
        click.echo(f"results page: {storage.redact(write_site(output))}")
    except Exception as exc:  # noqa: BLE001 - the run's outputs stand without the page
        click.echo(f"WARNING: no results page ({storage.redact(str(exc))}); "
                   f"retry with: roadseg view {storage.redact(output)}", err=True)


# --- results: view / frames ----------------------------------------------------------------------

from roadseg_dist.results.settings import FramesSettings, ViewSettings  # noqa: E402 - each section owns its imports


@main.command()
@settings.cli_options(ViewSettings)
def view(config, **values):
    """Write OUTPUT/index.html: a static page of an inference run (no server, no CDN; relative links,
    so it works from disk or an S3 prefix served as static files), with one page per source:
    its overlay video, class-fraction timeline, thumbnails where the class mix changes most, legend."""
    from roadseg_dist import storage
    from roadseg_dist.results.page import write_site
    from roadseg_dist.results.run import ResultsError

    s = settings.build(ViewSettings, config, **values)
    try:
        index = write_site(s.output, s.thumbnails)
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"results page: {storage.redact(index)}")


@main.command()
@settings.cli_options(FramesSettings)
def frames(config, **values):
    """Search OUTPUT/frames.parquet (local or S3) with a SQL filter over the class fractions (0..1).

    Columns: video, frame, timestamp and one per class, spaces written as _ (traffic_light,
    traffic_sign). Prints the matching frames; --sheet draws their overlays in a grid. A mistake in
    --where or --order-by exits with code 2 and lists the columns. For example:

    \b
      roadseg frames OUT --where "person > 0.02 and road > 0.3" --order-by "person desc" \\
          --limit 50 --sheet people.jpg
    """
    import json as json_mod

    from roadseg_dist import storage
    from roadseg_dist.results import query, sheet

    s = settings.build(FramesSettings, config, **values)
    try:
        rows = query.search(s.output, s.where, s.order_by, s.limit)
    except query.QueryError as exc:
        raise click.UsageError(str(exc)) from None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if s.json_output:
        click.echo(json_mod.dumps(rows, indent=1))
    else:
        click.echo(query.format_table(rows, query.shown_columns(s.where, s.order_by)))
        click.echo(f"{len(rows)} frame(s)" + (" (--limit reached)" if len(rows) == s.limit else ""), err=True)
    if s.sheet and not rows:
        click.echo("no frame matched: no contact sheet written", err=True)
    elif s.sheet:
        sheet.write_sheet(s.sheet, sheet.contact_sheet(s.output, rows, s.sheet_columns))
        click.echo(f"contact sheet: {storage.redact(s.sheet)}", err=True)


# --- eval / compare / demo -----------------------------------------------------------------------

from roadseg_dist.compare import CompareSettings  # noqa: E402 - each section owns its imports
from roadseg_dist.evaluate import EvalSettings  # noqa: E402


@main.command("eval")
@settings.cli_options(EvalSettings)
def eval_(config, **values):
    """Score CHECKPOINT (or a run's best checkpoint) on a sharded split, in parallel on Ray.

    mIoU, per-class IoU/accuracy, pixel accuracy and fwIoU with the official BDD100K evaluator's
    definitions, written to OUT/eval.json, eval.md and iou.png; --save-preds also writes the
    predicted train-id masks so the official toolkit can score them.
    """
    from roadseg_dist import eval_report, evaluate

    s = settings.build(EvalSettings, config, **values)
    result = evaluate.run_eval(s)
    eval_report.print_summary(result)
    click.echo(f"reports: {result['reports']['markdown']}  {result['reports']['chart']}")


@main.command()
@click.argument("model_args", metavar="CKPT_OR_RUN...", nargs=-1)
@settings.cli_options(CompareSettings)
def compare(model_args, config, **values):
    """Compare checkpoints or runs side by side: mIoU, per-class IoU, parameters, frames/s.

    Every model is scored on the same split and timed at the same input size on this machine;
    the table goes to the terminal and to OUT/compare.md, compare.json and compare.png.
    """
    from roadseg_dist import compare as compare_mod

    if model_args:
        values["models"] = model_args
    s = settings.build(CompareSettings, config, **values)
    result = compare_mod.run_compare(s)
    compare_mod.print_table(result)
    click.echo(f"reports: {result['reports']['markdown']}  {result['reports']['chart']}")

from roadseg_dist.demo import DemoSettings  # noqa: E402


@main.command()
@settings.cli_options(DemoSettings)
def demo(config, **values):
    """The whole story on this machine: synthetic data -> shards -> 2-worker Ray training ->
    evaluation -> segmentation of driving clips; ends with the mIoU and where the outputs are."""
    from roadseg_dist import demo as demo_mod

    s = settings.build(DemoSettings, config, **values)
    demo_mod.run_demo(s)

# --- cluster -------------------------------------------------------------------------------------

from roadseg_dist.submit import SubmitSettings  # noqa: E402 - each section owns its imports


@main.command(context_settings={"ignore_unknown_options": True})
@settings.cli_options(SubmitSettings)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(args, config, **values):
    """Run JOB (train, infer, shard, eval, compare, check) on a Ray cluster: roadseg submit JOB -- ARGS...

    Ships roadseg_dist/, jobs/, configs/, pyproject.toml (and README.md) as the job's working
    directory, printing what goes with sizes; sends the S3 endpoint and region of this environment
    but no keys (the nodes use their own; see --pass-credentials); follows the logs; exits with the
    job's status (0 = SUCCEEDED).
    """
    from roadseg_dist import submit as submit_mod

    s = settings.build(SubmitSettings, config, **values)
    sys.exit(submit_mod.submit(s, args))


if __name__ == "__main__":
    sys.exit(main())
