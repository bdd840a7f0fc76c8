"""Headless Chromium (Debian ``chromium``) for tests that check a rendered page.

Runs as root with the sandbox off (root cannot use it), no GPU, and no
background networking or component updates, in a throwaway profile. Also a
small PNG decoder (RGB/RGBA, 8 bit, non-interlaced: what Chromium writes) so a
test can count pixels without Pillow.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium (scripts/system-deps.sh installs it)",
)


def _run(args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(page: Path, profile: Path, size: tuple[int, int] = (1280, 1600)) -> str:
    """The DOM after the page's scripts ran, serialised by Chromium."""
    proc = _run(
        [f"--window-size={size[0]},{size[1]}", "--dump-dom", page.resolve().as_uri()], profile
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(page: Path, out: Path, profile: Path, size: tuple[int, int] = (1280, 1600)) -> Path:
    """A PNG of the rendered page at ``size``."""
    proc = _run(
        [
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={out}",
            page.resolve().as_uri(),
        ],
        profile,
    )
    assert proc.returncode == 0 and out.exists(), proc.stderr[-2000:]
    return out


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA PNG (RFC 2083)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    i = 0
    for _ in range(height):
        ftype = raw[i]
        line = bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        # RFC 2083 section 6: filter types 0-4, applied per byte
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        prev = line
        if bpp == 4:
            rows.append(bytes(v for j, v in enumerate(line) if j % 4 != 3))
        else:
            rows.append(bytes(line))
    return width, height, rows


def count_color(rows: list[bytes], rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    """How many pixels are within ``tolerance`` of ``rgb`` on every channel."""
    r0, g0, b0 = rgb
    n = 0
    for row in rows:
        for x in range(0, len(row), 3):
            if (
                abs(row[x] - r0) <= tolerance
                and abs(row[x + 1] - g0) <= tolerance
                and abs(row[x + 2] - b0) <= tolerance
            ):
                n += 1
    return n
