"""`--where`: keep rows (or index items) by their metadata columns, one grammar for every command.

`COL=V1,V2` keeps a row whose COL is one of the values, `COL!=V1,V2` one whose COL is none of them; values compare
without case and a missing column counts as blank; every condition must hold. Several conditions come as repeated
flags, or joined with ';' in one string (CONVIRT_WHERE, convirt.toml). Pure Python: configs (pydantic validators),
the data layer (rows) and the Searcher (items.jsonl's columns) all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# column -> (values, lower-cased; True: the column must hold one of them, False: none of them)
Conditions = dict[str, tuple[set[str], bool]]


def where_items(value: str | Iterable[str]) -> list[str]:
    """A flag's list, or a string of conditions joined with ';' -> one condition per item; ValueError when one is
    not COLUMN=VALUE[,VALUE...] or COLUMN!=VALUE[,...] (pydantic validators and the Searcher say it in one line)."""
    items = [v for s in ([value] if isinstance(value, str) else value) for v in str(s).split(";") if v.strip()]
    for item in items:
        col, _, values = item.partition("=")
        if not col.removesuffix("!").strip() or not [v for v in values.split(",") if v.strip()]:
            raise ValueError(f"{item!r} is not COLUMN=VALUE[,VALUE...] or COLUMN!=VALUE[,...] (e.g. view=PA,AP)")
    return items


def parse_where(items: str | Iterable[str]) -> Conditions:
    """['view=PA,AP', 'modality!=CT'] -> {'view': ({'pa', 'ap'}, True), 'modality': ({'ct'}, False)}."""
    out: Conditions = {}
    for item in where_items(items):
        col, _, values = item.partition("=")
        keep = not col.endswith("!")
        wanted, _ = out.setdefault(col.removesuffix("!").strip(), (set(), keep))
        wanted.update(v.strip().lower() for v in values.split(",") if v.strip())
    return out


def excluded(columns: Mapping[str, str], conditions: Conditions) -> str | None:
    """Why the conditions leave out a row with these columns ('--where view: LATERAL'; no value: 'blank'), or None."""
    for col, (values, keep) in conditions.items():
        value = str(columns.get(col, "")).strip()
        if (value.lower() in values) != keep:
            return f"--where {col}: {value or 'blank'}"
    return None
