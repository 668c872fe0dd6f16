"""``roadseg frames OUTPUT --where EXPR``: search the stats of a run (OUTPUT/frames/) with DuckDB.

The table is exposed as ``frames`` with snake_case names (``traffic light`` -> ``traffic_light``),
so a filter is plain SQL: ``person > 0.02 and road > 0.3``. DuckDB scans the Parquet through a
pyarrow dataset on our storage layer (local or S3, only the columns and row groups it needs), runs
with file access disabled, and parses EXPR as one expression (no second statement can ride along).
"""
from __future__ import annotations

import re
from typing import Any

from roadseg_dist import labels, storage
from roadseg_dist.results.runview import column, parts
from roadseg_dist.results.timeline import TIMELINE_CLASSES

KEY_COLUMNS = ("video", "frame", "timestamp")


class QueryError(ValueError):
    """EXPR or ORDER BY cannot be run; the message lists the columns available."""


alias = column  # the SQL name of a stats column: ``traffic light`` -> ``traffic_light``


def connect(output: str):
    """A DuckDB connection with the view ``frames`` over OUTPUT's stats (the frames/ parts, or an
    older run's frames.parquet) as one table; returns (con, columns)."""
    import duckdb
    import pyarrow.dataset as ds

    found = parts(output)
    if not found:
        raise FileNotFoundError(f"{storage.redact(storage.join(output, 'frames'))} does not exist: run "
                                "`roadseg infer` with stats in --outputs (the default) first")
    fs, _ = storage.arrow_filesystem(found[0])
    dataset = ds.dataset([storage.arrow_filesystem(u)[1] for u in found], filesystem=fs, format="parquet")
    con = duckdb.connect(config={"enable_external_access": False})
    con.register("frames_parquet", dataset)
    names = dataset.schema.names
    select = ", ".join(f'"{n}" AS {alias(n)}' for n in names)
    con.execute(f"CREATE VIEW frames AS SELECT {select} FROM frames_parquet")
    return con, [alias(n) for n in names]


def search(output: str, where: str = "true", order_by: str = "video, frame", limit: int = 20) -> list[dict[str, Any]]:
    """Rows of the frames table matching ``where`` (SQL), ordered, at most ``limit``; snake_case keys."""
    import duckdb

    con, columns = connect(output)
    try:
        rel = con.view("frames").filter(where).order(f"{order_by}, video, frame").limit(limit)
        rows, names = rel.fetchall(), rel.columns
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        spaced = [f"{c!r} is written {alias(c)}" for c in labels.CLASSES
                  if " " in c and c in f"{where} {order_by}".lower()]
        hint = f" ({'; '.join(spaced)})" if spaced else ""
        raise QueryError(f"cannot run --where {where!r} --order-by {order_by!r}: {first}{hint}\n"
                         f"columns: {', '.join(columns)}\n(class names with spaces are written with _: "
                         f"traffic_light, traffic_sign; fractions are 0..1)") from None
    finally:
        con.close()
    return [dict(zip(names, row)) for row in rows]


QUALITY_COLUMNS = ("confidence", "uncertain", "flicker")


def shown_columns(where: str, order_by: str) -> list[str]:
    """Number columns for the printed table: the classes and quality columns named in the query,
    else the driving classes."""
    numbers = [alias(c) for c in labels.CLASSES] + list(QUALITY_COLUMNS)
    named = [c for c in numbers if re.search(rf"\b{c}\b", f"{where} {order_by}", re.IGNORECASE)]
    return named or [alias(cols[0]) for _, cols in TIMELINE_CLASSES]


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Fixed-width text: video, frame, timestamp, then the given fraction columns."""
    width = max([len("video"), *(len(str(r["video"])) for r in rows)])
    head = f"{'video':<{width}}  {'frame':>7}  {'time s':>8}  " + "  ".join(f"{c:>9}" for c in columns)
    lines = [head]
    for r in rows:
        lines.append(f"{r['video']:<{width}}  {r['frame']:>7}  {r['timestamp']:>8.2f}  "
                     + "  ".join(f"{r[c]:>9.4f}" if r.get(c) is not None else f"{'-':>9}" for c in columns))
    return "\n".join(lines)
