"""Training and scoring: ``roadseg train``, ``runs``, ``eval``, ``compare``, ``demo``."""
from __future__ import annotations

import click

from roadseg_dist import settings
from roadseg_dist.cli import build, main, result, results_console
from roadseg_dist.extras import require
from roadseg_dist.eval.settings import CompareSettings
from roadseg_dist.demo import DemoSettings
from roadseg_dist.eval.settings import EvalSettings
from roadseg_dist.train.settings import TrainSettings

# --- train ---------------------------------------------------------------------------------------


@main.command()
@settings.cli_options(TrainSettings)
def train(config, **values):
    """Train a zoo model with Ray Train (DDP), streaming the shards of --data; the run goes to STORAGE/NAME.

    Prints one line per epoch (stderr) and, at the end, the best val mIoU and where its checkpoint is (stdout).
    """
    s = build(TrainSettings, config, **values)
    require("train", "roadseg train")
    if s.mlflow:
        require("tracking", "roadseg train --mlflow")
    from roadseg_dist import storage
    from roadseg_dist.train import driver

    summary = driver.run(s)
    if summary.get("best_checkpoint"):
        result(f"best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']}: "
               f"{storage.redact(summary['best_checkpoint'])}")
    result(f"curves {storage.redact(summary['curves'])}, metrics {storage.redact(summary['metrics'])}, "
           f"{len(summary['checkpoints'])} checkpoint folder(s), {summary['seconds']:.0f}s")


@main.command()
@click.argument("storage_url", metavar="STORAGE")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per run) instead of a table.")
def runs(storage_url: str, as_json: bool) -> None:
    """List the training runs under STORAGE (local, file:// or s3://): status, epochs, what can be
    resumed, model, best mIoU.

    The status comes from each run's status.json, which the driver rewrites while it runs: running,
    interrupted (the driver stopped writing it: killed, or its machine gone; --resume continues),
    finished, failed (with the reason); unknown for older runs. "resume from" is the newest epoch whose
    checkpoint was finished. A run whose files cannot be read is listed with the file named.
    """
    import json as json_mod

    from roadseg_dist import storage
    from roadseg_dist.train import rundir as run_mod

    try:
        rows = run_mod.list_runs(storage_url)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot list runs under {storage.redact(storage_url)}: "
                                   f"{storage.redact(str(exc))}") from None
    if as_json:
        result(json_mod.dumps(rows, indent=2))
        return
    if not rows:
        result(f"no runs under {storage.redact(storage_url)}")
        return
    print_runs(rows, f"runs under {storage.redact(storage_url)}")


def print_runs(rows: list[dict], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for col, justify in (("run", "left"), ("status", "left"), ("epochs", "right"), ("resume", "right"),
                         ("model", "left"), ("best mIoU (epoch)", "right"), ("updated", "left")):
        table.add_column(col, justify=justify, no_wrap=col in ("status", "updated"))
    colours = {"running": "yellow", "finished": "green", "failed": "red", "interrupted": "magenta"}
    for r in rows:
        planned = f"/{r['planned_epochs']}" if r["planned_epochs"] else ""
        best = f"{100 * r['best_val_miou']:.1f} % ({r['best_epoch']})" if r["best_val_miou"] is not None else "-"
        status = f"[{colours.get(r['status'], 'white')}]{r['status']}[/]"
        epochs = "?" if r["epochs"] is None else f"{r['epochs']}{planned}"
        updated = (r["updated"] or "-")[5:16].replace("T", " ") if r["updated"] else "-"
        table.add_row(escape(r["name"]), status, epochs, str(r["resumable_epoch"] or "-"),
                      escape(r["model"] or "-"), best, updated)
    console = results_console()
    console.print(table)
    for r in rows:
        if r["problem"]:
            console.print(f"[red]{escape(r['name'])}[/]: {escape(r['problem'])}", highlight=False)
        elif r["status"] == "failed" and r["error"]:
            console.print(f"{r['name']} failed: {r['error']}", markup=False, highlight=False)

# --- eval / compare / demo -----------------------------------------------------------------------


@main.command("eval")
@settings.cli_options(EvalSettings)
def eval_(config, **values):
    """Score CHECKPOINT (or a run's best checkpoint) on a sharded split, in parallel on Ray.

    mIoU, per-class IoU/accuracy, pixel accuracy and fwIoU with the official BDD100K evaluator's
    definitions, written to OUT/eval.json, eval.md and iou.png; --save-preds also writes the
    predicted train-id masks so the official toolkit can score them.
    """
    s = build(EvalSettings, config, **values)
    require("train", "roadseg eval")
    from roadseg_dist.eval import evaluate, report as eval_report

    scores = evaluate.run(s)
    eval_report.print_summary(scores, results_console())
    result(f"reports: {scores['reports']['markdown']}  {scores['reports']['chart']}")


@main.command()
@click.argument("model_args", metavar="CKPT_OR_RUN...", nargs=-1)
@settings.cli_options(CompareSettings)
def compare(model_args, config, **values):
    """Compare checkpoints or runs side by side: mIoU, per-class IoU, parameters, frames/s.

    Every model is scored on the same split and timed at the same input size on this machine;
    the table goes to the terminal and to OUT/compare.md, compare.json and compare.png.
    """
    if model_args:
        values["models"] = model_args
    s = build(CompareSettings, config, **values)
    require("train", "roadseg compare")
    from roadseg_dist.eval import compare as compare_mod

    scores = compare_mod.run(s)
    compare_mod.print_table(scores, results_console())
    result(f"reports: {scores['reports']['markdown']}  {scores['reports']['chart']}")


@main.command()
@settings.cli_options(DemoSettings)
def demo(config, **values):
    """The whole story on this machine: synthetic data -> shards -> 2-worker Ray training ->
    evaluation -> segmentation of driving clips; ends with the mIoU and where the outputs are."""
    s = build(DemoSettings, config, **values)
    require("train", "roadseg demo")
    if s.s3:
        require("dev", "roadseg demo --s3 (a loopback S3 server)")
    from roadseg_dist import demo as demo_mod

    summary = demo_mod.run_demo(s)
    demo_mod.print_summary(summary, results_console())
