"""Domain errors. The CLI turns each into one clear message and an exit code.

Third-party exceptions are wrapped at the edge (``raise StoreError(...) from e``)
so that a user never sees a raw traceback for a mistake of theirs.
"""

from __future__ import annotations


class EgressWatchError(Exception):
    """Base class: a problem a user can fix, with a message that says how."""

    #: process exit code the CLI uses for this error (see README, 'Exit codes')
    exit_code = 3


class ConfigError(EgressWatchError):
    """A configuration, policy or catalog file is wrong: names file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.detail = message
        where = ""
        if path:
            where = path
            if line:
                where += f":{line}"
            where += ": "
        if field:
            where += f"{field}: "
        super().__init__(where + message)


class GeoIPError(EgressWatchError):
    """A GeoIP database is missing, unreadable or of the wrong type."""


class StoreError(EgressWatchError):
    """The database cannot be opened, migrated or written."""

    exit_code = 4


class CaptureError(EgressWatchError):
    """Packet capture cannot start (no permission, no such interface, bad filter)."""

    exit_code = 4
