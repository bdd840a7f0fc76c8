"""Expected-egress profiles (``data/profiles.toml``) and host patterns for ``verify``."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from egresswatch.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Expectation:
    """One thing a tool is known to contact, when, and how to stop it."""

    hosts: tuple[str, ...]
    payload: tuple[str, ...]
    allow: bool
    what: str
    when: str = ""
    opt_out: str = ""

    def matches_host(self, host: str | None) -> bool:
        return host_matches(host, self.hosts)

    def covers(self, host: str | None, payload_type: str) -> bool:
        return self.matches_host(host) and (not self.payload or payload_type in self.payload)


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    name: str
    expects: tuple[Expectation, ...]


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    """Profiles from ``path`` or the shipped ``data/profiles.toml``; ConfigError when malformed."""
    if path is None:
        text = resources.files("egresswatch").joinpath("data", "profiles.toml").read_text()
        where = "profiles.toml"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(e.strerror or str(e), path=str(path)) from e
        where = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Python 3.12's TOMLDecodeError has no lineno yet (3.14 adds it): read the message.
        found = re.search(r"line (\d+)", str(e))
        line = getattr(e, "lineno", None) or (int(found.group(1)) if found else None)
        raise ConfigError(str(e), path=where, line=line) from e
    out: dict[str, Profile] = {}
    for pid, body in (doc.get("profiles") or {}).items():
        expects: list[Expectation] = []
        for i, entry in enumerate(body.get("expect", [])):
            fld = f"profiles.{pid}.expect[{i}]"
            hosts = entry.get("hosts")
            if (
                not isinstance(hosts, list)
                or not hosts
                or not all(isinstance(h, str) for h in hosts)
            ):
                raise ConfigError(
                    "'hosts' must be a non-empty list of names", path=where, field=fld
                )
            if not isinstance(entry.get("allow"), bool) or not isinstance(entry.get("what"), str):
                raise ConfigError(
                    "'allow' (true/false) and 'what' are required", path=where, field=fld
                )
            expects.append(
                Expectation(
                    hosts=tuple(h.lower() for h in hosts),
                    payload=tuple(entry.get("payload", ())),
                    allow=entry["allow"],
                    what=entry["what"],
                    when=entry.get("when", ""),
                    opt_out=entry.get("opt_out", ""),
                )
            )
        out[pid] = Profile(pid, str(body.get("name", pid)), tuple(expects))
    return out


def host_matches(host: str | None, patterns: Iterable[str]) -> bool:
    """``a.com`` covers itself and every name below it; ``*`` globs (``cdn-lfs*.x.co``)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if "*" in p:
            if fnmatch.fnmatchcase(host, p):
                return True
        elif host == p or host.endswith("." + p):
            return True
    return False
