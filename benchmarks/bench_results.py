"""Benchmark of `roadseg view` and `roadseg frames` (issue 12) on an archive-sized stats table.

A made-up OUTPUT of N sources x F frames (report.json and frames.parquet in the infer schema; no
image files, which the page only links). Prints:
  view: write_site          seconds to write index.html + N source pages (local disk), and per source
  page sizes                index.html and the largest source page, in KB
  chromium load             time to the load event of index.html and of one source page (file://)
  frames: DuckDB            one --where/--order-by/--limit query through query.search (and the first, cold)
  frames: pandas            the same result with pandas (read the parquet, filter, sort); ratio

    .venv/bin/python benchmarks/bench_results.py [--sources 1000] [--frames 300]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from roadseg_dist import labels
from roadseg_dist.results import query
from roadseg_dist.results.page import write_site

WHERE, ORDER = "person > 0.05 and road > 0.3", "person desc"


def make_output(out: str, sources: int, frames: int) -> int:
    rng = np.random.default_rng(0)
    n = sources * frames
    mix = rng.dirichlet(np.full(labels.NUM_CLASSES, 0.5), size=n).astype(np.float32)
    cols = {"video": pa.array(np.repeat([f"archive/day{i // 100:02d}/clip{i:04d}" for i in range(sources)], frames)),
            "frame": pa.array(np.tile(np.arange(frames), sources), pa.int64()),
            "timestamp": pa.array(np.tile(np.arange(frames) / 30.0, sources))}
    cols.update({c: pa.array(mix[:, k]) for k, c in enumerate(labels.CLASSES)})
    os.makedirs(out, exist_ok=True)
    pq.write_table(pa.table(cols), os.path.join(out, "frames.parquet"))
    report = {"sources": sources, "videos_done": sources, "videos_failed": 0, "failures": [], "frames_total": n,
              "frames_this_run": n, "seconds": 1.0, "frames_per_second": float(n), "checkpoint": None,
              "settings": {"outputs": ["overlay", "video", "stats"]}, "output": out}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f)
    return n


def chromium_load_ms(urls: list[str]) -> list[float]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page()
        for url in urls:
            page.goto(url, wait_until="load")
            out.append(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sources", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-results-")
    try:
        out = os.path.join(work, "out")
        n = make_output(out, args.sources, args.frames)
        print(f"{args.sources} sources x {args.frames} frames = {n:,} rows")
        t = time.perf_counter()
        index = write_site(out)
        dt = time.perf_counter() - t
        print(f"view: write_site        {dt:8.2f} s   ({1000 * dt / args.sources:.1f} ms per source)")
        pages = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f == "index.html" and r != out]
        largest = max(pages, key=os.path.getsize)
        print(f"page sizes              index.html {os.path.getsize(index) / 1e3:.0f} KB, "
              f"largest source page {os.path.getsize(largest) / 1e3:.0f} KB")
        if os.path.exists("/usr/bin/chromium"):
            ms = chromium_load_ms([f"file://{index}", f"file://{largest}"])
            print(f"chromium load           index.html {ms[0]:.0f} ms, source page {ms[1]:.0f} ms")
        t = time.perf_counter()
        query.search(out, WHERE, ORDER, limit=50)
        cold = time.perf_counter() - t  # includes importing duckdb
        t = time.perf_counter()
        rows = query.search(out, WHERE, ORDER, limit=50)
        duck = time.perf_counter() - t
        t = time.perf_counter()
        df = pd.read_parquet(os.path.join(out, "frames.parquet"))
        want = df[(df["person"] > 0.05) & (df["road"] > 0.3)].sort_values(
            ["person", "video", "frame"], ascending=[False, True, True]).head(50)
        pdt = time.perf_counter() - t
        assert [(r["video"], r["frame"]) for r in rows] == list(zip(want["video"], want["frame"]))
        print(f"frames: DuckDB          {1000 * duck:8.0f} ms   --where {WHERE!r} --order-by {ORDER!r} --limit 50"
              f" ({1000 * cold:.0f} ms the first time, importing duckdb)")
        print(f"frames: pandas          {1000 * pdt:8.0f} ms   same rows; pandas / DuckDB = {pdt / duck:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
