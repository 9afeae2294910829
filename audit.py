"""An audit of a loaded database against its log files, by other means than etl.py's: each file's
NextSong events counted with plain json, line by line, against the plays and duplicates the
manifest says its load took and the lines that load rejected. test.ipynb shows it beside the
checks etl.py runs.

Only the files still as they were loaded are counted again (the same SHA-256): a file changed
since, or gone, has nothing to be counted against, and is named with why.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Literal, NamedTuple

import db
import extract
import sql_queries as sql


@dataclasses.dataclass(frozen=True)
class Recount:
    recounted: int  # files counted again
    differences: dict[str, int]  # path: its NextSong events less its plays, duplicates, rejects
    not_recounted: dict[str, str]  # path (or the data's URL, out of reach): why


# How a load ended (load_runs.status): one killed stays 'running' until the next run starts. What
# a run that did not succeed committed stays.
RunStatus = Literal["running", "succeeded", "failed", "interrupted"]


class LastRun(NamedTuple):
    data: str  # the folder (or URL) it read
    run_id: int
    status: RunStatus


def last_run(conn) -> LastRun:
    """The latest load: what the tables hold came from its data, whether it finished or not."""
    with conn.cursor() as cur:
        cur.execute(sql.audit_last_run)
        found = cur.fetchone()
    if found is None:
        raise db.DatabaseError("nothing is loaded in this database yet: run `python etl.py` first")
    return LastRun(*found)


def recount_plays(conn, data: str) -> Recount:
    """The log files under data counted again, against what the database says of them."""
    with conn.cursor() as cur:
        cur.execute(sql.audit_log_loads)
        loads = {path: (sha256, taken) for path, sha256, taken in cur.fetchall()}
        cur.execute(sql.audit_rejected_lines)
        rejected = {(path, line) for path, line in cur.fetchall()}
    differences, not_recounted, found = {}, {}, set()
    try:
        for path, read, parts in extract.texts(data, "log"):
            found.add(path)
            if read.error or path not in loads or read.sha256 != loads[path][0]:
                not_recounted[path] = read.error or (
                    "changed since its load" if path in loads else "not loaded yet"
                )
                continue
            try:
                lines = next_song_lines(parts)
            except extract.DamagedFile as exc:
                not_recounted[path] = f"damaged: {exc}"
                continue
            taken = len(lines) - len({(path, n) for n in lines} & rejected)
            if taken != loads[path][1]:
                differences[path] = taken - loads[path][1]
    except extract.StoreError as exc:  # an object store out of reach: what it holds is unknown
        not_recounted[data] = str(exc)
        return Recount(len(found - not_recounted.keys()), differences, not_recounted)
    gone = dict.fromkeys(sorted(loads.keys() - found), "no longer there")
    return Recount(len(found - not_recounted.keys()), differences, not_recounted | gone)


def next_song_lines(parts: Iterable[bytes]) -> set[int]:
    """The numbers of the lines of a file's text that are NextSong events, judged by json."""
    numbers, number = set(), 0
    for part in parts:
        for line in extract.raw_lines(part):
            number += 1
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("page") == "NextSong":
                numbers.add(number)
    return numbers
