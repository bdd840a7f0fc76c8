"""`mitmdump -s addons/egresswatch.py --set ...` with options that cannot be applied.

mitmproxy applies a script's ``--set`` values after the script's ``load``; when one
fails to parse, or is given twice, it drops the script without a word and proxies
every flow unjudged. The addon checks them first: start-up must stop with exit
status 1 and the reason, and the proxy must never listen.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.pg import free_port

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).with_name("mitmdump")


def _mitmdump(tmp_path: Path, port: int, *sets: str) -> subprocess.Popen[str]:
    cmd = [
        str(MITMDUMP),
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={tmp_path / 'mitm'}",
        "-s",
        str(ROOT / "addons" / "egresswatch.py"),
        "--set",
        "egresswatch_db=none",
        "--set",
        "egresswatch_metrics_listen=",
    ]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_valid_options_start_the_proxy(tmp_path: Path) -> None:
    """The control: the same command line without a bad value starts and listens."""
    port = free_port()
    proc = _mitmdump(tmp_path, port, "egresswatch_process_lookup=false")
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "mitmdump did not listen within 60 s"
            time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "egresswatch: enforce mode" in out or "listening" in out


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        (("egresswatch_process_lookup=maybe",), "egresswatch_process_lookup"),
        (
            ("egresswatch_policy=/nonexistent-a.toml", "egresswatch_policy=/nonexistent-b.toml"),
            "Received multiple values for egresswatch_policy",
        ),
        # parsed by mitmproxy, refused by egresswatch: one line, not the script's traceback
        (("egresswatch_body_limit=abc",), "not a size: 'abc'"),
        (("egresswatch_policy=/nonexistent-policy.toml",), "no such policy file"),
    ],
)
def test_options_mitmproxy_cannot_apply_stop_startup(
    tmp_path: Path, sets: tuple[str, ...], reason: str
) -> None:
    port = free_port()
    proc = _mitmdump(tmp_path, port, *sets)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"mitmdump kept running without egresswatch:\n{out}")
    assert proc.returncode == 1, out
    assert reason in out and "Not starting" in out, out
    assert out.count("egresswatch:") == 1, out  # one line says why
    assert "Traceback" not in out, out
    assert "listening" not in out and not _listening(port), out
