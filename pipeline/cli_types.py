"""Option types and checks shared by every `escalate` command: strict dates, input folders, writable outputs.

Standard library, typer and the calendar of features.config only, so the CLI (and `run_score`) can refuse bad
input before importing the stack.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import date
from pathlib import Path

import typer
from typer.exceptions import TyperException

from features.config import EARLIEST_DAY, LATEST_DAY

DATE_METAVAR = "YYYY-MM-DD"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def parse_iso_date(value: str | date, what: str = "date") -> date:
    """A real calendar date written `YYYY-MM-DD`; anything else (01/11/2026, 18.11.2026, 2026-13-01, 20261118) is a
    ValueError naming `what`, since a day-first/month-first guess silently shifts every as-of window. Days outside
    EARLIEST_DAY … LATEST_DAY are refused too: no record dated by them could pass the data contract."""
    if isinstance(value, date):
        day = value
    elif _ISO_DATE.fullmatch(text := str(value).strip()):
        try:
            day = date.fromisoformat(text)
        except ValueError as err:
            raise ValueError(f"{what} {value!r} is not a calendar date ({err})") from None
    else:
        raise ValueError(f"{what} {value!r} is not a date in the form {DATE_METAVAR} (e.g. 2026-11-18)")
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise ValueError(f"{what} {day.isoformat()!r} lies outside {EARLIEST_DAY.isoformat()} … {LATEST_DAY.isoformat()}, "
                         "the days the data contract reads (birth years from 1900)")
    return day


def iso_date_option(value: str | date | None) -> date | None:
    """typer `parser=` for every date option: a `datetime.date`, or a one-line usage error (exit 2)."""
    if value is None:
        return None
    try:
        return parse_iso_date(value, "")
    except ValueError as err:
        raise typer.BadParameter(str(err).strip()) from None


def require_dir(path: Path, option: str) -> Path:
    """`path` when it is an existing folder; else a one-line usage error naming `option` (e.g. `--data`)."""
    if not Path(path).is_dir():
        what = "is a file, not a folder" if Path(path).exists() else "does not exist"
        raise typer.BadParameter(f"{path} {what}", param_hint=option)
    return Path(path)


def output_problem(path: str | Path, *, folder: bool) -> str | None:
    """Why this user cannot create or overwrite `path` (a folder when `folder`, else a file), or None when it can:
    checked before any work so a run cannot fail at its last step. Given as typed (`str`), a path ending in a
    separator names a folder, as for `score --out DIR/`, so it is no file name (Path drops that separator)."""
    if not folder and isinstance(path, str) and path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        return f"{path} names a folder (it ends in {path[-1]!r}), not a file"
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
        target = path if folder else path.parent
        if (not os.access(target, os.W_OK | os.X_OK) or (not folder and not os.access(path, os.W_OK))
                or not _can_create_in(target)):
            return f"{path} is not writable by this user"
        return None
    parent = path.absolute().parent
    while not parent.exists():  # the first existing ancestor is where the missing folders would be created
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be created: {parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        return f"{path} cannot be created: {parent} is not writable by this user"
    return None


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in `folder`: `os.access` says yes to root everywhere, even in /proc or
    on a read-only mount, so a run would fail at its last step; one empty file, removed at once, tells."""
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".escalate-write-check-")
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


def require_writable(path: str | Path, option: str, *, folder: bool) -> Path:
    """`path` when this user can create or overwrite it (see `output_problem`); else a one-line usage error naming
    `option`. A file option passes its value as typed (text), so `--out new/` is refused, never made a file."""
    problem = output_problem(path, folder=folder)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint=option)
    return Path(path)


class Refusal(TyperException):
    """A run refused before any work (exit status 2); the message says what is wrong and how to fix it."""

    exit_code = 2


def require_own_folder(out: Path, option: str, marker: str, what: str) -> Path:
    """`out` when it is new, empty or holds an earlier output of this command (`marker` inside it); else a refusal:
    tables written there would overwrite or shadow what is there (the contract reads .parquet before .csv)."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        raise Refusal(f"{option} {out} is not empty and holds no {what} (no {marker}): the tables written there "
                      "would overwrite or shadow what is there; choose an empty or new folder")
    return out
