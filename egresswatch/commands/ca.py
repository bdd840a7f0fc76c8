"""``egresswatch ca``: export the proxy's CA certificate and say how to trust it, per platform.

Only the certificate leaves ``confdir`` (``mitmproxy-ca-cert.pem``), never
``mitmproxy-ca.pem``, which holds the private key. The CA is created when
missing, so devices can be prepared before the proxy first runs.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from egresswatch.errors import EgressWatchError

#: platform key -> (title, steps); ``{pem}``/``{der}`` are the exported file's paths
PLATFORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "debian": (
        "Debian / Ubuntu (system store: curl, apt, Python's ssl with the system bundle)",
        (
            # update-ca-certificates(8) only picks up files ending in .crt (PEM content)
            "sudo cp {pem} /usr/local/share/ca-certificates/egresswatch.crt",
            "sudo update-ca-certificates",
        ),
    ),
    "fedora": (
        "Fedora / RHEL / CentOS Stream (update-ca-trust(8))",
        (
            "sudo cp {pem} /etc/pki/ca-trust/source/anchors/egresswatch.pem",
            "sudo update-ca-trust",
        ),
    ),
    "arch": (
        "Arch Linux (p11-kit trust)",
        ("sudo trust anchor --store {pem}",),
    ),
    "macos": (
        "macOS (System keychain; Safari, Chrome, curl)",
        (
            "sudo security add-trusted-cert -d -r trustRoot "
            "-k /Library/Keychains/System.keychain {pem}",
        ),
    ),
    "windows": (
        "Windows (Local Machine root store, from an administrator prompt)",
        (
            "certutil -addstore root {der}",
            "PowerShell: Import-Certificate -FilePath {der} "
            "-CertStoreLocation Cert:\\LocalMachine\\Root",
        ),
    ),
    "android": (
        "Android (user CA; apps targeting API 24+ trust it only if their "
        "network_security_config allows user CAs; Chrome does)",
        (
            "copy {der} to the device (a .crt or .cer name)",
            "Settings > Security > Encryption & credentials > Install a certificate > "
            "CA certificate",
        ),
    ),
    "ios": (
        "iOS / iPadOS",
        (
            "AirDrop or mail {pem} to the device and open it (a profile is downloaded)",
            "Settings > General > VPN & Device Management: install the profile",
            "Settings > General > About > Certificate Trust Settings: enable full trust",
        ),
    ),
    "firefox": (
        "Firefox (own store on every OS)",
        (
            "Settings > Privacy & Security > Certificates > View Certificates > "
            "Authorities > Import {pem}",
            "or about:config security.enterprise_roots.enabled = true (use the OS store)",
        ),
    ),
    "python": (
        "Python (openai, httpx, requests, huggingface_hub; requests ignores the OS store)",
        ("export SSL_CERT_FILE={pem} REQUESTS_CA_BUNDLE={pem}",),
    ),
    "node": (
        "Node.js (adds to the bundled roots)",
        ("export NODE_EXTRA_CA_CERTS={pem}",),
    ),
    "java": (
        "Java (JDK 9+ keytool)",
        ("keytool -importcert -cacerts -alias egresswatch -file {pem}",),
    ),
    "curl": (
        "curl / git",
        ("curl --cacert {pem} ...   or   export CURL_CA_BUNDLE={pem} GIT_SSL_CAINFO={pem}",),
    ),
}


@dataclass(frozen=True)
class ExportedCA:
    """The certificate's bytes in one format and its SHA-256 fingerprint."""

    data: bytes
    fingerprint: str
    subject: str


def load_ca(confdir: Path, fmt: str = "pem") -> ExportedCA:
    """Read (creating if needed) the CA certificate in ``confdir``, as PEM or DER bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from egresswatch.commands.proxy import ensure_ca

    path = ensure_ca(confdir)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise EgressWatchError(f"cannot read the CA certificate {path}: {e}") from e
    der = cert.public_bytes(Encoding.DER)
    data = der if fmt == "der" else cert.public_bytes(Encoding.PEM)
    fp = hashlib.sha256(der).hexdigest().upper()
    return ExportedCA(
        data=data,
        fingerprint=":".join(fp[i : i + 2] for i in range(0, len(fp), 2)),
        subject=cert.subject.rfc4514_string(),
    )


def instructions(pem: str, der: str, platforms: tuple[str, ...] = ()) -> list[str]:
    """Install steps for ``platforms`` (all when empty), with the file names filled in."""
    lines: list[str] = []
    for key in platforms or tuple(PLATFORMS):
        title, steps = PLATFORMS[key]
        lines.append(f"{title}:")
        lines += [f"  {step.format(pem=pem, der=der)}" for step in steps]
    return lines


@click.command("ca")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pem", "der"]),
    default="pem",
    show_default=True,
    help="PEM (Linux, macOS, Python, Node, iOS) or DER (Windows .cer, Android .crt).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the certificate here (default: PEM on stdout).",
)
@click.option(
    "--confdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="mitmproxy's directory holding the CA (default: proxy.confdir of the config, "
    "~/.mitmproxy).",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="egresswatch.toml whose proxy.confdir to use (env EGRESSWATCH_CONFIG).",
)
@click.option(
    "--platform",
    "platforms",
    type=click.Choice(list(PLATFORMS)),
    multiple=True,
    help="Only show the steps for this platform. Repeatable.",
)
@click.option("-q", "--quiet", is_flag=True, help="No install instructions.")
def ca(
    fmt: str,
    output: Path | None,
    confdir: Path | None,
    config_path: Path | None,
    platforms: tuple[str, ...],
    quiet: bool,
) -> None:
    """Export the CA certificate clients must trust, with install steps per platform.

    Only the certificate is exported, never the key. Install it only on machines
    you are allowed to monitor: whoever holds the key can read their TLS traffic.

    \b
    Examples:
      egresswatch ca -o egresswatch-ca.pem
      egresswatch ca --format der -o egresswatch-ca.cer --platform windows
      egresswatch ca --quiet > ca.pem
    """
    if confdir is None:
        from egresswatch import config as cfg

        confdir = cfg.load(cfg.find_config(config_path))["proxy.confdir"]
    assert confdir is not None
    if output is None and fmt == "der" and sys.stdout.isatty():
        raise click.UsageError("DER is binary: give -o FILE or redirect stdout")
    exported = load_ca(confdir, fmt)
    if output is not None:
        try:
            output.write_bytes(exported.data)
        except OSError as e:
            raise EgressWatchError(f"cannot write {output}: {e}") from e
        target = str(output)
    else:
        sys.stdout.buffer.write(exported.data)
        sys.stdout.flush()
        target = str(confdir.expanduser() / "mitmproxy-ca-cert.pem")
    if quiet:
        return
    pem = target if fmt == "pem" else "egresswatch-ca.pem"
    der = target if fmt == "der" else "egresswatch-ca.cer"
    lines = [
        f"egresswatch CA: {exported.subject}",
        f"SHA-256 fingerprint: {exported.fingerprint}",
        f"Written to {target}" if output is not None else f"File: {target}",
        "",
        "Trust it (check the fingerprint on the device first):",
    ]
    if fmt == "pem" and output is not None:
        lines.append(f"  (DER for Windows/Android: egresswatch ca --format der -o {der})")
    elif fmt == "der":
        lines.append(f"  (PEM for the others: egresswatch ca -o {pem})")
    lines += instructions(pem, der, platforms)
    click.echo("\n".join(lines), err=True)
