"""``roadseg view OUTPUT``: a static results page, no server and no CDN.

    OUTPUT/index.html        the run (sources done/failed, frames, frames/s, model, settings) and one
                             row per source with its mean class mix, linking to
    OUTPUT/<id>/index.html   overlay.mp4 in a <video>, the thumbnail strip, the class timeline, the legend

Every link is relative, so the pages work from local disk and from an S3 prefix served as static
files; one small page per source keeps an archive of a thousand videos fast to open.
"""
from __future__ import annotations

import html
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np

from roadseg_dist import labels, storage
from roadseg_dist.infer.render import frame_name
from roadseg_dist.results import moments, timeline
from roadseg_dist.results.run import RunView, SourceStats, load

WRITE_THREADS = 8  # page PUTs are latency-bound
THUMBNAILS = 6

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:12px 20px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:22px}table{border-collapse:collapse}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}th{color:#555;font-weight:600}
.mix{width:260px;height:12px;background:#eee}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}.legend i{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:-2px}video{width:100%;background:#000}
.strip{display:flex;gap:6px}.strip figure{margin:0;flex:1;cursor:pointer}.strip img{width:100%;display:block}
.strip figcaption{font-size:11px;color:#555}.fail{color:#a00}nav a{margin-right:12px}"""
# a click on a thumbnail or on the timeline plays the video from that moment
_SEEK_JS = f"""const v=document.querySelector('video'),s=document.querySelector('svg.timeline');
document.querySelectorAll('[data-t]').forEach(e=>e.onclick=()=>{{if(v){{v.currentTime=+e.dataset.t;v.play();}}}});
if(v&&s)s.onclick=e=>{{const r=s.getBoundingClientRect(),x=(e.clientX-r.left)/r.width*{timeline.WIDTH}-{timeline.LABEL_W};
if(x>0){{v.currentTime=x/{timeline.WIDTH - timeline.LABEL_W}*s.dataset.duration;v.play();}}}};"""


def _page(title: str, body: str, script: str = "") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><link rel="icon" href="data:,"><style>{_CSS}</style></head>'
            f'<body>{body}{f"<script>{script}</script>" if script else ""}</body></html>\n')


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def legend() -> str:
    items = "".join(f'<span><i style="background:{_hex(c)}"></i>{html.escape(n)}</span>'
                    for n, c in zip(labels.CLASSES, labels.PALETTE))
    return f'<h2>Legend (BDD100K palette)</h2><div class="legend">{items}</div>'


def mix_bar(means: np.ndarray) -> str:
    """The mean class mix of a source as one stacked bar: a single element with a CSS gradient
    (classes under 0.5 % left out), so a thousand rows stay light."""
    stops, at, tip = [], 0.0, []
    for n, c, m in sorted(zip(labels.CLASSES, labels.PALETTE, means), key=lambda t: -t[2]):
        if m < 0.005:
            continue
        stops.append(f"{_hex(c)} {100 * at:.1f}% {100 * (at + m):.1f}%")
        tip.append(f"{n} {100 * m:.0f}%")
        at += m
    gradient = f"background:linear-gradient(90deg,{','.join(stops)},#eee 0)" if stops else ""
    return f'<div class="mix" style="{gradient}" title="{html.escape(", ".join(tip))}"></div>'


def _fmt(value, spec: str = "", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def summary_html(view: RunView) -> str:
    r, m = view.report, view.model
    failed = r.get("failures") or []
    if "error" in m:
        model = f'<span class="fail">{html.escape(m["error"])}</span>'
    else:
        kwargs = ", ".join(f"{k}={v}" for k, v in m["arch_kwargs"].items())
        miou = "-" if m["val_miou"] is None else f"{100 * m['val_miou']:.1f} %"
        model = (f'{html.escape(str(m["arch"]))}{f" ({html.escape(kwargs)})" if kwargs else ""}, epoch '
                 f'{_fmt(m["epoch"])}, val mIoU {miou}, {_fmt(m["parameters"], ",")} parameters')
    rows = [("sources", f'{r.get("videos_done", 0)} done, {r.get("videos_failed", 0)} failed, of {r["sources"]}'),
            ("frames", f'{r.get("frames_total", 0):,} in all; {r.get("frames_this_run", 0):,} this run in '
                       f'{r.get("seconds", 0):.1f} s = {r.get("frames_per_second", 0):.2f} frames/s'
                       + (f', model in {html.escape(str(r["precision"]))}' if r.get("precision") else "")),
            ("model", model), ("checkpoint", html.escape(str(m.get("checkpoint") or r.get("checkpoint")))),
            ("input", html.escape(str(r.get("input")))), ("finished", html.escape(str(r.get("finished_at"))))]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    settings = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                       for k, v in (r.get("settings") or {}).items())
    out = f"<table>{table}</table><details><summary>settings</summary><table>{settings}</table></details>"
    if failed:
        rows = "".join(f'<tr><td>{html.escape(f["id"])}</td><td>{html.escape(f["input"])}</td>'
                       f'<td class="fail">{html.escape(f["reason"])}</td></tr>' for f in failed)
        out += f"<h2>Failed sources ({len(failed)})</h2><table><tr><th>id</th><th>input</th><th>reason</th></tr>{rows}</table>"
    return out


def index_html(view: RunView) -> str:
    rows = "".join(f'<tr><td><a href="{quote(src.id)}/index.html">{html.escape(src.id)}</a></td>'
                   f"<td>{len(src.frames):,}</td><td>{src.timestamps[-1]:.1f} s</td>"
                   f"<td>{mix_bar(src.fractions.mean(axis=0))}</td></tr>" for src in view.stats or [])
    if view.stats is None:
        sources = "<p>No frames.parquet in OUTPUT (the run was made without <code>stats</code> in --outputs).</p>"
    else:
        sources = ("<table><tr><th>source</th><th>frames</th><th>last frame at</th><th>mean class mix</th></tr>"
                   f"{rows}</table>")
    body = (f"<h1>Segmentation results: {html.escape(str(view.report.get('output')))}</h1>{summary_html(view)}"
            f"<h2>Sources ({len(view.stats or [])})</h2>{sources}{legend()}")
    return _page("roadseg results", body)


def source_html(view: RunView, src: SourceStats, prev_id: str | None, next_id: str | None, thumbnails: int) -> str:
    up = "../" * (src.id.count("/") + 1)
    nav = [f'<a href="{up}index.html">all sources</a>']
    nav += [f'<a href="{up}{quote(o)}/index.html">{label} {html.escape(o)}</a>'
            for label, o in (("previous:", prev_id), ("next:", next_id)) if o]
    ts = src.timestamps
    body = (f"<nav>{''.join(nav)}</nav><h1>{html.escape(src.id)}</h1>"
            f"<p>{len(ts):,} frames, last at {ts[-1]:.2f} s</p>")
    if "video" in view.outputs:
        body += '<video src="overlay.mp4" controls muted preload="auto"></video>'
    picks = moments.strip_frames(src.fractions, thumbnails) if thumbnails else []
    if picks and (view.outputs & {"overlay", "video"}):
        figs = "".join(f'<figure data-t="{ts[i]:.3f}"><img src="{frame_name(int(src.frames[i]), "overlay")}" '
                       f'alt="frame {src.frames[i]}"><figcaption>frame {src.frames[i]}, {ts[i]:.2f} s</figcaption>'
                       "</figure>" for i in picks)
        body += f'<h2>Where the class mix changes most</h2><div class="strip">{figs}</div>'
    svg = timeline.svg(ts, timeline.driving_fractions(src.fractions), [ts[i] for i in picks])
    body += f"<h2>Class fractions over time</h2>{svg}{legend()}"
    return _page(f"{src.id} - roadseg results", body, _SEEK_JS)


def write_html(url: str, text: str) -> bool:
    """Write a page unless the same bytes are already there (a re-run rewrites nothing that holds);
    True when written. Through a local .html file, so that the S3 upload carries Content-Type
    text/html, which a browser needs to render a page served from a bucket."""
    data = text.encode("utf-8")
    try:
        if storage.read_bytes(url) == data:
            return False
    except FileNotFoundError:
        pass
    with storage.atomic_output(url, suffix=".html") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return True


def write_site(output: str, thumbnails: int = THUMBNAILS) -> str:
    """Write OUTPUT/index.html and a page per finished source; returns the index URL."""
    view = load(output)
    sources = view.stats or []
    ids = [src.id for src in sources]

    def write_source(i: int) -> None:
        page = source_html(view, sources[i], ids[i - 1] if i else None, ids[i + 1] if i + 1 < len(ids) else None,
                           thumbnails)
        write_html(storage.join(view.output, ids[i], "index.html"), page)

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(write_source, range(len(sources))))
    index = storage.join(view.output, "index.html")
    write_html(index, index_html(view))  # last: the index links only pages that exist
    return index
