"""Inference and its results: ``roadseg infer``, ``view``, ``frames``."""
from __future__ import annotations

import sys

import click

from roadseg_dist import settings
from roadseg_dist.cli import build, main, result
from roadseg_dist.extras import require
from roadseg_dist.infer.settings import InferSettings
from roadseg_dist.results.settings import FramesSettings, ViewSettings

# --- infer ---------------------------------------------------------------------------------------


EXIT_SOME_INPUTS_FAILED = 3


@main.command()
@settings.cli_options(InferSettings)
def infer(config, **values):
    """Segment every frame of every video (or image folder) under INPUT with Ray Data; write under OUTPUT.

    Per source id (its path relative to INPUT): OUTPUT/ID/{mask,color,overlay,original}/NNNNNN.*
    and OUTPUT/ID/overlay.mp4; for the run: OUTPUT/frames/ (parquet parts, read as one table) and
    OUTPUT/report.json. A re-run resumes: only missing work is done. Exits 3 when some inputs failed (listed in report.json).
    """
    from roadseg_dist import storage
    from roadseg_dist.infer import pipeline

    s = build(InferSettings, config, **values)
    report = pipeline.run(s)
    result(f"{report['videos_done']}/{report['sources']} source(s) done "
               f"({report['videos_skipped']} already complete), {report['frames_this_run']} frame(s) "
               f"this run at {report['frames_per_second']:.2f} frames/s (model in {report['precision']}); report: "
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
        result(f"results page: {storage.redact(write_site(output))}")
    except Exception as exc:  # noqa: BLE001 - the run's outputs stand without the page
        click.echo(f"WARNING: no results page ({storage.redact(str(exc))}); "
                   f"retry with: roadseg view {storage.redact(output)}", err=True)


# --- results: view / frames ----------------------------------------------------------------------


@main.command()
@settings.cli_options(ViewSettings)
def view(config, **values):
    """Write OUTPUT/index.html: a static page of an inference run (no server, no CDN; relative links,
    so it works from disk or an S3 prefix served as static files), with one page per source:
    its overlay video, class-fraction timeline, thumbnails where the class mix changes most, legend."""
    from roadseg_dist import storage
    from roadseg_dist.results import page
    from roadseg_dist.results.runview import ResultsError

    s = build(ViewSettings, config, **values)
    try:
        index = page.run(s)
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from None
    result(f"results page: {storage.redact(index)}")


@main.command()
@settings.cli_options(FramesSettings)
def frames(config, **values):
    """Search OUTPUT's stats (OUTPUT/frames/, local or S3) with a SQL filter over their columns.

    Columns: video, frame, timestamp, one class fraction (0..1) per class, spaces written as _
    (traffic_light, traffic_sign), confidence, uncertain, flicker, mask, overlay, source, model.
    Prints the matching frames; --sheet draws their overlays in a grid; --export writes them with the
    model's masks as pre-labels for labelling (--per-source, --min-gap spread them out). A mistake in
    --where or --order-by exits with code 2 and lists the columns. For example:

    \b
      roadseg frames OUT --where "person > 0.02 and road > 0.3" --order-by "person desc" \\
          --limit 50 --sheet people.jpg
      roadseg frames OUT --order-by "confidence" --limit 200 --per-source 5 --min-gap 2 --export to-label
    """
    import json as json_mod

    from roadseg_dist import storage
    from roadseg_dist.results import export as export_mod, query, sheet

    s = build(FramesSettings, config, **values)
    require("infer", "roadseg frames")
    spreading = s.per_source is not None or s.min_gap > 0
    try:  # spreading skips rows: ask for more, then take --limit of them in order
        rows = query.search(s.output, s.where, s.order_by, max(s.limit * 50, 10_000) if spreading else s.limit)
    except query.QueryError as exc:
        raise click.UsageError(str(exc)) from None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if spreading:
        rows = export_mod.spread(rows, s.per_source, s.min_gap, s.limit)
    if s.json_output:
        result(json_mod.dumps(rows, indent=1))
    else:
        result(query.format_table(rows, query.shown_columns(s.where, s.order_by)))
        click.echo(f"{len(rows)} frame(s)" + (" (--limit reached)" if len(rows) == s.limit else ""), err=True)
    if s.sheet and not rows:
        click.echo("no frame matched: no contact sheet written", err=True)
    elif s.sheet:
        sheet.write_sheet(s.sheet, sheet.contact_sheet(s.output, rows, s.sheet_columns))
        click.echo(f"contact sheet: {storage.redact(s.sheet)}", err=True)
    if s.export:
        try:
            done = export_mod.export(s.output, rows, s.export)
        except export_mod.ExportError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"exported {done['frames']} frame(s) of {done['sources']} source(s) with their masks as "
                   f"pre-labels: {done['dest']} (bdd100k/ for roadseg shard, css/ for CVAT or Datumaro)", err=True)
