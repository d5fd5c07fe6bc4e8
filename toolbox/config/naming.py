"""How values become parts of a run folder's name, and which names are acceptable.

Kept apart from ``toolbox.rundir.identity`` (which flags make a run, its default name) so that the flag
layer and the methods can use it without importing the run's naming logic (which imports them).
"""

from __future__ import annotations

import re

from toolbox.config.choices import BATCH_TOKEN, format_ranks, parse_ranks
from toolbox.errors import UsageError

_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,-]*")
MAX_PART_BYTES = 255  # what Linux file systems accept for one folder name
MAX_NAME_CHARS = 1024


def validate_experiment_name(name: str, flag: str = "--experiment_name") -> str:
    """Refuse names that would leave the experiments folder, need quoting in a shell, or that the
    file system would refuse (too long)."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(not _NAME_PART.fullmatch(part) for part in parts):
        raise UsageError(
            f"{flag} must be a relative path of parts made of letters, digits and ._=+,- "
            f"(no '..', no leading '/', no spaces); got {name!r}"
        )
    too_long = [part for part in parts if len(part.encode()) > MAX_PART_BYTES]
    if too_long or len(name) > MAX_NAME_CHARS:
        raise UsageError(
            f"{flag} is too long for the file system (at most {MAX_PART_BYTES} characters between slashes and "
            f"{MAX_NAME_CHARS} in all); got {len(name)} characters"
        )
    return name


def ranks_tag(text: str) -> str:
    """``BATCH_SIZE,32,8,8`` -> ``B-32-8-8``, ``BATCH_SIZE,x0.5,x1,x1`` -> ``B-x0.5-x1-x1``: ranks
    without commas, for folder names."""
    return format_ranks(parse_ranks(text)).replace(BATCH_TOKEN, "B").replace(",", "-")


def format_value(value: object) -> str:
    """A flag's value as it appears in a run's name: stable, short and exact (``0.01``, ``50``,
    ``5e-05``; a float that is a whole number drops its ``.0``, so ``--beta 50`` is ``beta=50``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)
