"""``roadseg view OUTPUT``: a static results page, no server and no CDN.

    OUTPUT/index.html        the run (sources done/failed, frames, frames/s, model, settings), a search
                             box over every source id (``sources.js``) and the first PAGE_ROWS sources,
    OUTPUT/index-N.html      the next PAGE_ROWS sources each, one row per source with its mean class mix,
                             linking to
    OUTPUT/<id>/index.html   overlay.mp4 in a <video>, the thumbnail strip, the class timeline, the legend

Every link is relative, so the pages work from local disk and from an S3 prefix served as static
files. The stats are read a part at a time, and a source's page is written once, with its part:
``OUTPUT/.roadseg/pages/<part>.json`` keeps the part's one-line summaries (and the page settings),
written after its pages, so a re-run writes only the pages of new parts and the index. At 100,000
sources the index stays pages of PAGE_ROWS rows and the search a list of ids.
"""
from __future__ import annotations

import bisect
import html
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np

from roadseg_dist import labels, storage
from roadseg_dist.render import frame_name
from roadseg_dist.results import moments, timeline
from roadseg_dist.results.runview import RunView, SourceStats, load, part_ids, read_part

WRITE_THREADS = 8  # page PUTs are latency-bound
THUMBNAILS = 6

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:12px 20px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:22px}table{border-collapse:collapse}
td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}th{color:#555;font-weight:600}
.mix{width:260px;height:12px;background:#eee}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}.legend i{display:inline-block;width:12px;
height:12px;margin-right:4px;vertical-align:-2px}video{width:100%;background:#000}
.strip{display:flex;gap:6px}.strip figure{margin:0;flex:1;cursor:pointer}.strip img{width:100%;display:block}
.strip figcaption{font-size:11px;color:#555}.fail{color:#a00}nav a{margin-right:12px}
.pager{margin:8px 0}.pager a,.pager b{margin-right:6px}"""
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


PAGE_ROWS = 1000
_SEARCH_JS = """const q=document.getElementById('q'),hits=document.getElementById('hits');
q.oninput=()=>{const t=q.value.toLowerCase();hits.innerHTML='';if(!t)return;let n=0;
for(const id of (window.SOURCES||[])){if(id.toLowerCase().includes(t)){const li=document.createElement('li'),
a=document.createElement('a');a.href=encodeURI(id)+'/index.html';a.textContent=id;li.appendChild(a);
hits.appendChild(li);if(++n>=50)break;}}if(!n)hits.innerHTML='<li>no source matches</li>';};"""


def index_name(page: int) -> str:
    return "index.html" if page == 1 else f"index-{page}.html"


def _pager(page: int, pages: int) -> str:
    if pages < 2:
        return ""
    links = [f'<a href="{index_name(p)}">{p}</a>' if p != page else f"<b>{p}</b>" for p in range(1, pages + 1)]
    return f'<nav class="pager">pages: {" ".join(links)}</nav>'


def index_html(view: RunView, rows: list, page: int = 1, pages: int = 1, total: int | None = None) -> str:
    """One page of the index: ``rows`` are (id, frames, last time, mean fractions) summaries."""
    table = "".join(f'<tr><td><a href="{quote(sid)}/index.html">{html.escape(sid)}</a></td>'
                    f"<td>{frames:,}</td><td>{last:.1f} s</td><td>{mix_bar(np.asarray(means))}</td></tr>"
                    for sid, frames, last, means in rows)
    if view.parts is None:
        sources = "<p>No stats in OUTPUT (the run was made without <code>stats</code> in --outputs).</p>"
    else:
        first = (page - 1) * PAGE_ROWS
        sources = (f"<p>sources {first + 1:,}-{first + len(rows):,} of {total or len(rows):,}</p>{_pager(page, pages)}"
                   "<table><tr><th>source</th><th>frames</th><th>last frame at</th><th>mean class mix</th></tr>"
                   f"{table}</table>{_pager(page, pages)}")
    search = ('<h2>Find a source</h2><input id="q" type="search" placeholder="part of a source id" size="40">'
              '<ul id="hits"></ul>') if view.parts is not None else ""
    head = summary_html(view) if page == 1 else '<p><a href="index.html">the run</a></p>'
    body = (f"<h1>Segmentation results: {html.escape(str(view.report.get('output')))}</h1>{head}{search}"
            f"<h2>Sources ({total or 0:,})</h2>{sources}{legend()}")
    script = '<script src="sources.js"></script>' if search else ""
    return _page("roadseg results", body + script, _SEARCH_JS if search else "")


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
    images = bool(view.outputs & {"overlay", "video"})
    if picks and images:
        body += f'<h2>Where the class mix changes most</h2>{_strip(src, picks)}'
    known = src.confidence is not None and not np.isnan(src.confidence).all()
    unsure = moments.least_confident(src.confidence, thumbnails) if known and thumbnails else []
    if unsure and images:
        body += (f'<h2>Where the model is least sure</h2>{_strip(src, unsure, confidence=True)}'
                 '<p class="note">mean top-class probability of the frame\'s pixels; '
                 '<code>roadseg frames --order-by confidence --export DIR</code> hands such frames to a labeller</p>')
    svg = timeline.svg(ts, timeline.driving_fractions(src.fractions), [ts[i] for i in picks],
                       src.confidence if known else None)
    body += f"<h2>Class fractions over time</h2>{svg}{legend()}"
    return _page(f"{src.id} - roadseg results", body, _SEEK_JS)


def _strip(src: SourceStats, picks: list[int], confidence: bool = False) -> str:
    """A row of overlay thumbnails at rows ``picks``; a click plays the video from there."""
    ts = src.timestamps
    figs = "".join(f'<figure data-t="{ts[i]:.3f}"><img src="{frame_name(int(src.frames[i]), "overlay")}" '
                   f'alt="frame {src.frames[i]}"><figcaption>frame {src.frames[i]}, {ts[i]:.2f} s'
                   + (f", confidence {src.confidence[i]:.2f}" if confidence else "") + "</figcaption></figure>"
                   for i in picks)
    return f'<div class="strip{" unsure" if confidence else ""}">{figs}</div>'


def write_html(url: str, text: str) -> bool:
    """Write a page unless the same bytes are already there (a re-run rewrites nothing that holds);
    True when written. To S3 through a local file of the same extension, so that the upload carries
    Content-Type text/html (or text/javascript), which a browser needs to use a file from a bucket."""
    data = text.encode("utf-8")
    try:
        if storage.read_bytes(url) == data:
            return False
    except FileNotFoundError:
        pass
    if not storage.is_remote(url):
        storage.write_bytes(url, data)
        return True
    with storage.atomic_output(url, suffix="." + url.rsplit(".", 1)[-1]) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return True


def write_site(output: str, thumbnails: int = THUMBNAILS) -> str:
    """Write the pages of the sources of new stats parts, then the index pages; returns the index URL."""
    view = load(output)
    book = PageBook(view, thumbnails)
    ids = book.all_ids()
    for part in book.new_parts():
        sources = read_part(part)
        with ThreadPoolExecutor(WRITE_THREADS) as pool:
            list(pool.map(lambda src: _write_source(view, src, ids, thumbnails), sources))
        book.save(part, sources)
    book.forget_stale()
    rows = book.summaries()
    pages = max(1, -(-len(rows) // PAGE_ROWS))
    if view.parts is not None:
        write_html(storage.join(view.output, "sources.js"),
                   "window.SOURCES=" + json.dumps([r[0] for r in rows], separators=(",", ":")) + ";\n")
    for page in range(pages, 0, -1):  # the first page last: it links the others
        chunk = rows[(page - 1) * PAGE_ROWS:page * PAGE_ROWS]
        write_html(storage.join(view.output, index_name(page)), index_html(view, chunk, page, pages, len(rows)))
    extra = pages + 1
    while storage.exists(storage.join(view.output, index_name(extra))):  # fewer sources than before
        storage.remove(storage.join(view.output, index_name(extra)))
        extra += 1
    return storage.join(view.output, "index.html")


def _write_source(view: RunView, src: SourceStats, ids: list[str], thumbnails: int) -> None:
    at = bisect.bisect_left(ids, src.id)
    prev_id = ids[at - 1] if at > 0 else None
    next_id = ids[at + 1] if at + 1 < len(ids) else None
    write_html(storage.join(view.output, src.id, "index.html"), source_html(view, src, prev_id, next_id, thumbnails))


class PageBook:
    """Which stats parts have their source pages written, with the summaries the index needs:
    ``OUTPUT/.roadseg/pages/<part>.json``, written after the part's pages."""

    def __init__(self, view: RunView, thumbnails: int):
        self.view, self.root = view, storage.join(view.output, ".roadseg", "pages")
        self.key = json.dumps({"thumbnails": thumbnails, "outputs": sorted(view.outputs)})
        self.parts = view.parts or []
        found = set(storage.list_files(self.root)) if storage.exists(self.root) else set()
        with ThreadPoolExecutor(16) as pool:
            books = pool.map(self._read, [p for p in self.parts if self._url(p) in found])
        self.done = {p: b for p, b in zip([p for p in self.parts if self._url(p) in found], books)
                     if b and b.get("key") == self.key}
        self.stale = found - {self._url(p) for p in self.parts}

    def _url(self, part: str) -> str:
        return storage.join(self.root, part.rsplit("/", 1)[-1] + ".json")

    def _read(self, part: str) -> dict | None:
        try:
            return json.loads(storage.read_text(self._url(part)))
        except (FileNotFoundError, ValueError):
            return None

    def new_parts(self) -> list[str]:
        return [p for p in self.parts if p not in self.done]

    def all_ids(self) -> list[str]:
        """Every source id, sorted (the new parts' ids read from their video column alone)."""
        ids = [r[0] for b in self.done.values() for r in b["sources"]]
        with ThreadPoolExecutor(16) as pool:
            for found in pool.map(part_ids, self.new_parts()):
                ids += found
        return sorted(set(ids))

    def save(self, part: str, sources: list[SourceStats]) -> None:
        rows = [[s.id, len(s.frames), float(s.timestamps[-1]) if len(s.timestamps) else 0.0,
                 [round(float(m), 4) for m in s.fractions.mean(axis=0)]] for s in sources]
        self.done[part] = {"key": self.key, "sources": rows}
        storage.write_text(self._url(part), json.dumps(self.done[part]))

    def forget_stale(self) -> None:
        """Summaries of parts that are gone (a batch rewritten without a redone source)."""
        for url in self.stale:
            storage.remove(url)

    def summaries(self) -> list:
        return sorted((r for b in self.done.values() for r in b["sources"]), key=lambda r: r[0])


def run(s) -> str:
    """``roadseg view``: ``write_site`` for ``ViewSettings``; returns the index URL."""
    return write_site(s.output, s.thumbnails)
