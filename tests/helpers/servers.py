"""Test "internet" servers: HTTP, HTTPS (own test CA) and WebSocket, logging everything they see.

The log is the witness for blocking tests: every accepted TCP connection, every TLS
handshake (with SNI) and every request (method, path, host, body length and a short
head) is one JSON line, written and flushed before the server answers. A test proves
"nothing reached the server" by reading this file.

Run it inside a network namespace as its own process::

    ip netns exec NS python tests/helpers/servers.py --bind 203.0.113.10 \\
        --http 80 --https 443 --cert DIR/server.pem --key DIR/server.key --log DIR/log.jsonl

It prints ``READY`` on stdout once every listener is bound. It answers the shapes the
real clients expect: OpenAI (chat, embeddings, files), Ollama (``/api/chat``),
Hugging Face (``/{repo}/resolve/{rev}/{file}`` and ``/api/telemetry/...``) and a
WebSocket echo on ``/ws``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import ssl
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# RFC 6455 section 1.3: the GUID appended to Sec-WebSocket-Key.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: the file a Hugging Face download test fetches
HF_FILE = b'{"architectures": ["TestModel"], "hidden_size": 8}\n'
HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


# -- test PKI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabPKI:
    """A CA and one server certificate signed by it (PEM files)."""

    ca_cert: Path
    cert: Path
    key: Path


def make_pki(directory: Path, names: list[str], addresses: list[str]) -> LabPKI:
    """Write a throwaway CA and a server certificate for ``names`` and ``addresses``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egresswatch test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = LabPKI(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


# -- the log ------------------------------------------------------------------------------


class EventLog:
    def __init__(self, path: Path) -> None:
        self._f = path.open("a", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        fields.update(event=event, t=time.time())
        self._f.write(json.dumps(fields) + "\n")
        self._f.flush()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events a server logged so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- HTTP/1.1 -----------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[str, str]]]:
    line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
    method, target, _ = line.split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
        if not raw:
            break
        name, _, value = raw.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return method, target, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return bytes(out)
            try:
                out += await reader.readexactly(size)
                await reader.readexactly(2)
            except asyncio.IncompleteReadError as e:
                raise asyncio.IncompleteReadError(bytes(out) + e.partial, None) from e
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


def _json(doc: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"content-type": "application/json"}, json.dumps(doc).encode()


def respond(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """The answer a real service would give, just enough for its official client."""
    p = path.split("?")[0]
    if p.endswith("/chat/completions"):
        return _json(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": "test",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "hello from the lab"},
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
    if p.endswith("/embeddings"):
        return _json(
            {
                "object": "list",
                "model": "test",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )
    if p.endswith("/files"):
        return _json(
            {
                "id": "file-test",
                "object": "file",
                "bytes": len(body),
                "created_at": 0,
                "filename": "data.jsonl",
                "purpose": "fine-tune",
                "status": "processed",
            }
        )
    if p == "/api/chat":
        return _json(
            {
                "model": "test",
                "created_at": "2026-01-01T00:00:00Z",
                "done": True,
                "message": {"role": "assistant", "content": "hello from the lab"},
            }
        )
    if p.startswith("/api/telemetry"):
        return 200, {"content-type": "application/json"}, b"{}"
    if "/resolve/" in p:
        etag = '"' + hashlib.sha256(HF_FILE).hexdigest() + '"'
        headers = {
            "content-type": "application/octet-stream",
            "etag": etag,
            "x-repo-commit": HF_COMMIT,
        }
        return 200, headers, HF_FILE
    return _json({"ok": True, "path": p})


class Server:
    """HTTP and HTTPS listeners sharing one handler and one log."""

    def __init__(self, log: EventLog, tls: ssl.SSLContext | None) -> None:
        self.log = log
        self.tls = tls

    async def handle_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.handle(reader, writer, tls=True)

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool = False
    ) -> None:
        # Logged at TCP accept, before any TLS: the witness for "no connection at all".
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        scheme = "https" if tls else "http"
        self.log.write("connect", peer=list(peer[:2]), local=list(local[:2]), scheme=scheme)
        try:
            if tls:
                assert self.tls is not None
                try:
                    await writer.start_tls(self.tls)
                except (ssl.SSLError, ConnectionError, OSError) as e:
                    self.log.write("tls-failed", peer=list(peer[:2]), error=str(e)[:200])
                    return
            while True:
                try:
                    method, target, headers = await _read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                hdrs = dict(headers)
                self.log.write(
                    "request-head",
                    scheme=scheme,
                    method=method,
                    path=target,
                    host=hdrs.get("host"),
                    length=hdrs.get("content-length"),
                )
                try:
                    body = await _read_body(reader, hdrs)
                except asyncio.IncompleteReadError as e:
                    self.log.write("request-incomplete", path=target, body_len=len(e.partial))
                    return
                self.log.write(
                    "request",
                    scheme=scheme,
                    method=method,
                    path=target,
                    host=hdrs.get("host"),
                    user_agent=hdrs.get("user-agent"),
                    body_len=len(body),
                    body_head=body[:120].decode("latin-1"),
                    body_sha256=hashlib.sha256(body).hexdigest(),
                )
                if hdrs.get("upgrade", "").lower() == "websocket":
                    await self._websocket(reader, writer, hdrs)
                    return
                status, rh, payload = respond(method, target, body)
                rh["content-length"] = str(len(payload))
                head = f"HTTP/1.1 {status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in rh.items())
                writer.write(head.encode() + b"\r\n" + (b"" if method == "HEAD" else payload))
                await writer.drain()
                if hdrs.get("connection", "").lower() == "close":
                    return
        finally:
            self.log.write("close", peer=list(peer[:2]))
            writer.close()

    async def _websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hdrs: dict[str, str]
    ) -> None:
        accept = base64.b64encode(
            hashlib.sha1(hdrs["sec-websocket-key"].encode() + _WS_GUID).digest()
        ).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        await writer.drain()
        while True:
            try:
                opcode, payload = await _ws_read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if opcode == 0x8:  # close (RFC 6455 5.5.1)
                writer.write(_ws_frame(0x8, payload[:2]))
                await writer.drain()
                return
            self.log.write("ws-message", opcode=opcode, data=payload[:200].decode("latin-1"))
            writer.write(_ws_frame(opcode, b"echo: " + payload))
            await writer.drain()


async def _ws_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (RFC 6455 section 5.2: client frames are masked)."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(length)
    return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


async def serve(
    bind: list[str],
    http_ports: list[int],
    https_ports: list[int],
    cert: Path | None,
    key: Path | None,
    log_path: Path,
) -> None:
    log = EventLog(log_path)
    tls: ssl.SSLContext | None = None
    if https_ports:
        assert cert and key
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        tls.set_alpn_protocols(["http/1.1"])

        def on_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            log.write("tls", sni=name)

        tls.sni_callback = on_sni  # type: ignore[assignment]
    server = Server(log, tls)
    servers = []
    for addr in bind:
        for port in http_ports:
            servers.append(await asyncio.start_server(server.handle, addr, port))
        for port in https_ports:
            servers.append(await asyncio.start_server(server.handle_tls, addr, port))
    log.write("ready", bind=bind, http=http_ports, https=https_ports)
    print("READY", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", action="append", required=True)
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--https", type=int, action="append", default=[])
    ap.add_argument("--cert", type=Path)
    ap.add_argument("--key", type=Path)
    ap.add_argument("--log", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        asyncio.run(serve(args.bind, args.http, args.https, args.cert, args.key, args.log))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
