"""Read connection URLs the way their drivers do: hosts, TLS parameters, embedded credentials; mask them.

The settings use this to decide whether a URL's traffic would cross a network in plaintext, to find every
credential a URL carries (for log redaction) and to show a URL with those credentials masked.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

__all__ = [
    "MASK",
    "HostKind",
    "host_kind",
    "looks_like_url",
    "mask_url",
    "query_values",
    "url_credentials",
    "url_hosts",
]

MASK = "**********"

HostKind = Literal["socket", "private", "public"]
"""``socket``: no network (a Unix socket); ``private``: loopback, private ranges, internal names; else public."""

# Names that public DNS never answers for: a compose/Kubernetes service name has no dot; these suffixes are
# special-use or reserved for internal networks (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal).
_PRIVATE_SUFFIXES = (".internal", ".local", ".localhost", ".localdomain", ".lan", ".home.arpa", ".svc")
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not routed publicly

# Query parameters whose value is a credential (libpq's and redis-py's, and the usual API-key names).
CREDENTIAL_PARAMETERS = frozenset(
    {"password", "sslpassword", "token", "access_token", "apikey", "api_key", "key", "secret", "auth"}
)


def looks_like_url(text: str) -> bool:
    """Return whether ``text`` has a ``scheme://`` start (so may carry credentials)."""
    return "://" in text


def host_kind(host: str) -> HostKind:
    """Classify one host of a URL by where its traffic goes."""
    name = unquote(host).strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if not name or name.startswith("/"):
        return "socket"
    if name == "localhost" or name.endswith(".localhost"):
        return "private"
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return "private" if "." not in name or name.endswith(_PRIVATE_SUFFIXES) else "public"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_private or address.is_link_local or address in _SHARED_ADDRESS_SPACE:
        return "private"
    return "public"


def query_values(url: str, name: str) -> list[str]:
    """Return every value of query parameter ``name`` (decoded), in order."""
    try:
        query = urlsplit(url).query
    except ValueError:  # a malformed IPv6 host: the format checks refuse such a URL anyway
        return []
    return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == name]


def url_hosts(url: str) -> list[str]:
    """Return the hosts a URL connects to: libpq's ``?host=`` wins, else every ``host[:port]`` of the netloc."""
    from_query = query_values(url, "host")
    if from_query:
        return [host for value in from_query for host in value.split(",")]
    try:
        netloc = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:
        return []
    hosts: list[str] = []
    for item in netloc.split(","):
        if item.startswith("["):
            hosts.append(item[1 : item.find("]")] if "]" in item else item[1:])
        else:
            hosts.append(item.split(":", 1)[0])
    return hosts


def _userinfo(url: str) -> tuple[str, str | None]:
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    user, colon, password = userinfo.partition(":")
    return user, (password if colon else None)


def url_credentials(url: str) -> set[str]:
    """Return every credential the URL carries, as written and percent-decoded.

    The password of the user part; the user part itself for http(s) URLs (``https://<token>@host``); the
    values of query parameters such as ``password`` or ``apikey``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found: set[str] = set()
    user, password = _userinfo(url)
    if password:
        found.add(password)
    elif user and parts.scheme.lower() in {"http", "https"}:
        found.add(user)
    for key, value in [*_raw_query(parts.query), *_raw_query(parts.fragment)]:
        if key in CREDENTIAL_PARAMETERS and value:
            found.update({value, unquote_plus(value)})
    return found | {unquote(item) for item in found}


def _raw_query(query: str) -> list[tuple[str, str]]:
    """Return the query's (decoded lower-case name, value as written) pairs."""
    pairs = (pair.partition("=") for pair in query.split("&") if pair)
    return [(unquote_plus(key).lower(), value) for key, _, value in pairs]


def mask_url(url: str) -> str:
    """Return ``url`` with every credential replaced by ``**********``; all of it when it cannot be parsed."""
    try:
        parts = urlsplit(url)
        user, password = _userinfo(url)
        hostport = parts.netloc.rpartition("@")[2]
    except ValueError:
        return MASK
    netloc = hostport
    if password is not None:
        netloc = f"{user}:{MASK}@{hostport}"
    elif user:
        netloc = f"{MASK if parts.scheme.lower() in {'http', 'https'} else user}@{hostport}"
    query = f"?{_mask_pairs(parts.query)}" if parts.query else ""
    fragment = f"#{_mask_pairs(parts.fragment)}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def _mask_pairs(query: str) -> str:
    masked = []
    for pair in query.split("&"):
        key = pair.partition("=")[0]
        masked.append(f"{key}={MASK}" if unquote_plus(key).lower() in CREDENTIAL_PARAMETERS else pair)
    return "&".join(masked)
