"""``ViewSettings`` and ``FramesSettings``: the flags of ``roadseg view`` and ``roadseg frames``."""
from __future__ import annotations

import dataclasses

from roadseg_dist.settings import SettingsError, field


@dataclasses.dataclass
class ViewSettings:
    output: str = field(argument=True, help="the OUTPUT of a `roadseg infer` run (local path, file:// or s3://)")
    thumbnails: int = field(6, help="overlay thumbnails per source (first frame + biggest changes of class mix)")

    def validate(self) -> None:
        if self.thumbnails < 0:
            raise SettingsError(f"--thumbnails must be 0 or more, got {self.thumbnails}")


@dataclasses.dataclass
class FramesSettings:
    output: str = field(argument=True, help="the OUTPUT of a `roadseg infer` run (local path, file:// or s3://)")
    where: str = field("true", help="SQL filter over the columns, e.g. \"person > 0.02 and road > 0.3\"")
    order_by: str = field("video, frame", help="SQL ORDER BY, e.g. \"person desc\"")
    limit: int = field(20, help="at most this many frames")
    json_output: bool = field(False, flag="--json", help="print JSON (every column) instead of a table")
    sheet: str | None = field(None, help="also write a contact sheet of the matching overlays (.png or .jpg)")
    sheet_columns: int = field(5, help="thumbnails per row of the contact sheet")
    export: str | None = field(None, path=True, help="also write the matching frames with their masks as pre-labels "
                                                    "to this folder: BDD100K layout (for `roadseg shard`), a CVAT/"
                                                    "Datumaro Common Semantic Segmentation set, manifest.jsonl")
    per_source: int | None = field(None, help="take at most this many frames of one source (--limit is the budget)")
    min_gap: float = field(0.0, metavar="SECONDS", help="take frames of one source at least this far apart")

    def validate(self) -> None:
        if self.per_source is not None and self.per_source < 1:
            raise SettingsError(f"--per-source must be at least 1, got {self.per_source}")
        if self.min_gap < 0:
            raise SettingsError(f"--min-gap must be 0 or more, got {self.min_gap}")
        if self.limit < 1:
            raise SettingsError(f"--limit must be at least 1, got {self.limit}")
        if self.sheet_columns < 1:
            raise SettingsError(f"--sheet-columns must be at least 1, got {self.sheet_columns}")
        if self.sheet and not self.sheet.lower().endswith((".png", ".jpg", ".jpeg")):
            raise SettingsError(f"--sheet {self.sheet}: name a .png, .jpg or .jpeg file")
