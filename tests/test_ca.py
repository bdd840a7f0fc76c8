"""`egresswatch ca`: the certificate (never the key) in PEM and DER, with install steps."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from egresswatch.cli import cli
from egresswatch.commands.ca import PLATFORMS, instructions


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(cli, ["ca", *args], env=env)
    return result.exit_code, result.stdout_bytes, result.stderr


def test_pem_on_stdout_is_the_proxys_certificate(tmp_path: Path) -> None:
    confdir = tmp_path / "mitm"
    code, out, err = invoke("--confdir", str(confdir))
    assert code == 0, err
    cert = x509.load_pem_x509_certificate(out)
    on_disk = x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    assert cert == on_disk
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" not in out and "PRIVATE KEY" not in err
    assert (confdir / "mitmproxy-ca.pem").read_bytes().count(b"PRIVATE KEY") == 2  # key stays
    fp = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper()
    assert ":".join(fp[i : i + 2] for i in range(0, 64, 2)) in err


def test_der_to_a_file_and_the_same_ca_every_time(tmp_path: Path) -> None:
    confdir = tmp_path / "mitm"
    code, _, err = invoke(
        "--confdir", str(confdir), "--format", "der", "-o", str(tmp_path / "c.cer")
    )
    assert code == 0, err
    der = (tmp_path / "c.cer").read_bytes()
    cert = x509.load_der_x509_certificate(der)
    code, out, _ = invoke("--confdir", str(confdir), "-q")
    assert code == 0
    assert x509.load_pem_x509_certificate(out) == cert  # not regenerated
    assert f"Written to {tmp_path / 'c.cer'}" in err
    assert f"certutil -addstore root {tmp_path / 'c.cer'}" in err


def test_every_platform_has_steps() -> None:
    lines = instructions("/x/ca.pem", "/x/ca.cer")
    text = "\n".join(lines)
    for title, _ in PLATFORMS.values():
        assert f"{title}:" in text
    for needle in (
        "/usr/local/share/ca-certificates/egresswatch.crt",  # Debian / Ubuntu
        "update-ca-trust",  # Fedora / RHEL
        "trust anchor --store /x/ca.pem",  # Arch
        "security add-trusted-cert",  # macOS
        "certutil -addstore root /x/ca.cer",  # Windows
        "Install a certificate",  # Android
        "Certificate Trust Settings",  # iOS
        "SSL_CERT_FILE=/x/ca.pem REQUESTS_CA_BUNDLE=/x/ca.pem",  # Python
        "NODE_EXTRA_CA_CERTS=/x/ca.pem",  # Node
    ):
        assert needle in text, needle


def test_platform_filter_and_quiet(tmp_path: Path) -> None:
    code, _, err = invoke("--confdir", str(tmp_path), "--platform", "macos")
    assert code == 0
    assert "macOS" in err and "Debian" not in err and "Windows" not in err
    code, out, err = invoke("--confdir", str(tmp_path), "-q")
    assert code == 0 and err == "" and out.startswith(b"-----BEGIN CERTIFICATE-----")


def test_confdir_from_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "egresswatch.toml"
    conf.write_text('[proxy]\nconfdir = "ca-here"\n')
    code, out, err = invoke("--config", str(conf), "-q")
    assert code == 0, err
    assert (tmp_path / "ca-here" / "mitmproxy-ca-cert.pem").read_bytes() == out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--format", "p12"], 2, "'p12' is not one of 'pem', 'der'"),
        (["--platform", "beos"], 2, "'beos' is not one of"),
    ],
)
def test_bad_flags(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    got, _, err = invoke("--confdir", str(tmp_path), *args)
    assert got == code and message in err


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    code, _, err = invoke("--confdir", str(tmp_path), "-o", str(tmp_path / "no" / "dir" / "c.pem"))
    assert code == 3
    assert err.startswith("egresswatch: error: cannot write")
    assert "Traceback" not in err
