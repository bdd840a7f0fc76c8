"""Known encrypted-DNS resolvers: DNS over HTTPS and DNS over TLS marking.

DoT has its own port (853, RFC 7858 §3.1). DoH (RFC 8484) is ordinary HTTPS, so
it is recognised by the resolver's name (SNI or DNS name) or address. The table
holds the public resolvers that browsers and operating systems offer by default;
addresses are from each operator's documentation:

- Google Public DNS: https://developers.google.com/speed/public-dns/docs/using
- Cloudflare 1.1.1.1: https://developers.cloudflare.com/1.1.1.1/ip-addresses/
- Quad9: https://www.quad9.net/service/service-addresses-and-features/
- AdGuard DNS: https://adguard-dns.io/kb/general/dns-providers/
- NextDNS, Mullvad, OpenDNS (Cisco): the operators' setup pages.
"""

from __future__ import annotations

import functools
import ipaddress

#: DNS over TLS (RFC 7858 §3.1) and DNS over QUIC (RFC 9250 §4.1.1) port
DOT_PORT = 853

#: resolver host name -> operator; names match exactly or as a parent domain
DOH_NAMES: dict[str, str] = {
    "dns.google": "Google",
    "dns.google.com": "Google",
    "cloudflare-dns.com": "Cloudflare",
    "mozilla.cloudflare-dns.com": "Cloudflare",
    "one.one.one.one": "Cloudflare",
    "1dot1dot1dot1.cloudflare-dns.com": "Cloudflare",
    "dns.quad9.net": "Quad9",
    "dns9.quad9.net": "Quad9",
    "dns11.quad9.net": "Quad9",
    "dns.adguard-dns.com": "AdGuard",
    "dns.nextdns.io": "NextDNS",
    "dns.mullvad.net": "Mullvad",
    "doh.opendns.com": "OpenDNS",
}

#: resolver addresses -> operator (the anycast service addresses)
DOH_ADDRESSES: dict[str, str] = {
    "8.8.8.8": "Google",
    "8.8.4.4": "Google",
    "2001:4860:4860::8888": "Google",
    "2001:4860:4860::8844": "Google",
    "1.1.1.1": "Cloudflare",
    "1.0.0.1": "Cloudflare",
    "2606:4700:4700::1111": "Cloudflare",
    "2606:4700:4700::1001": "Cloudflare",
    "9.9.9.9": "Quad9",
    "149.112.112.112": "Quad9",
    "2620:fe::fe": "Quad9",
    "2620:fe::9": "Quad9",
    "94.140.14.14": "AdGuard",
    "94.140.15.15": "AdGuard",
    "208.67.222.222": "OpenDNS",
    "208.67.220.220": "OpenDNS",
}

_RAW_ADDRESSES = {ipaddress.ip_address(a).packed: op for a, op in DOH_ADDRESSES.items()}


@functools.lru_cache(maxsize=4096)
def resolver_by_name(name: str | None) -> str | None:
    """The operator if ``name`` (or a parent of it) is a known DoH resolver name (memoised:
    called for every named flow)."""
    while name:
        op = DOH_NAMES.get(name)
        if op:
            return op
        _, _, name = name.partition(".")
        if "." not in name:
            return None
    return None


def resolver_by_address(raw: bytes) -> str | None:
    """The operator if the raw 4/16-byte address is a known resolver address."""
    return _RAW_ADDRESSES.get(raw)
