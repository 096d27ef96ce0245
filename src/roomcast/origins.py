"""Which browser pages may open a room socket: the WebSocket ``Origin`` check.

Layer: transport helper (used by ``security.RoomcastMiddleware`` and ``checks``); imports
Django's request and settings, never models or the channel layer.

A browser sends its session cookie with a WebSocket handshake to a site whatever page
opened it, and cookies ignore ports: a page on ``http://127.0.0.1:3000`` that opens
``ws://127.0.0.1:8000/ws/chat/lobby/`` carries the session of the user logged in on
port 8000. Only the ``Origin`` header tells the pages apart. The rule is Django's CSRF
origin check (``CsrfViewMiddleware._origin_verified``) applied to the handshake, as
OWASP ASVS 4.4.2 asks of WebSockets:

* A browser's ``Origin`` must equal the handshake's own origin exactly: scheme
  (``ws`` -> ``http``, ``wss`` -> ``https``, or what ``SECURE_PROXY_SSL_HEADER`` says, as
  ``request.is_secure()`` does), host and port (default ports count as written out). The
  host is ``request.get_host()``'s: the ``Host`` header (``X-Forwarded-Host`` with
  ``USE_X_FORWARDED_HOST``), which must pass ``ALLOWED_HOSTS``, so a DNS-rebinding page
  whose Host and Origin agree is still refused.
* ``ROOMCAST['ALLOWED_ORIGINS']`` lists origins allowed besides: exact ones
  (``https://app.example.com``, ``http://localhost:3000``) and subdomain wildcards
  (``https://*.example.com``: the domain and its subdomains, that scheme and port), as
  ``CSRF_TRUSTED_ORIGINS`` takes them. ``null`` (sandboxed iframes, ``file:`` and
  ``data:`` pages of any site) only when listed; ``*`` allows every origin. Both warn
  (``roomcast.W001``, ``W002``).
* A handshake without ``Origin`` is not from a browser (CLIs, servers), carries no
  ambient cookie, and is allowed; Channels' ``OriginValidator`` refuses it, which would
  lock out every non-browser client.

Entries without a scheme (``example.com``, Channels' ``OriginValidator`` form, meaning
any scheme and port) are refused by the system checks (``roomcast.E011``) with the origin
to write instead, as Django 4.0 did for ``CSRF_TRUSTED_ORIGINS``: read the old way they
would allow far more than their authors may think, dropped they would break the site.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import DisallowedHost, ImproperlyConfigured
from django.http import HttpRequest

ANY_ORIGIN = "*"
NULL_ORIGIN = "null"

#: Longest header value quoted in a log line, in characters: enough for any real origin
#: or host; a hostile client's 8 KB header would otherwise fill the log.
LOG_VALUE_MAX_CHARS = 100

#: Origins (and hosts) whose parse is kept: a site sees a handful, and a client sending
#: new ones each time only churns this bounded cache.
PARSED_ORIGINS_CACHED = 256

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*\Z")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True, slots=True)
class Origin:
    """A serialised origin, normalised: lower-case scheme and host, port always set
    for http and https (``None`` for other schemes written without one)."""

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port is None or self.port == _DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"


@functools.lru_cache(maxsize=PARSED_ORIGINS_CACHED)
def parse_origin(value: str) -> Origin | None:
    """``value`` (an ``Origin`` header or setting entry) as an Origin, or None if it is
    not one: ``scheme://host[:port]``, nothing before the host or after the port."""
    if not value.isprintable() or " " in value:  # urlsplit would drop tabs and newlines
        return None
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower case, IPv6 without brackets
    if (
        not _SCHEME.match(scheme)
        or not host
        or not value.lower().startswith(f"{scheme}://")
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or value.endswith(("?", "#"))
    ):
        return None
    return Origin(scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme))


class OriginSettingError(ValueError):
    """An entry of ``ROOMCAST['ALLOWED_ORIGINS']`` that is not an origin.

    ``str(error)`` says what is wrong; ``hint`` what to write instead.
    """

    def __init__(self, entry: str, problem: str, hint: str) -> None:
        super().__init__(f"ROOMCAST['ALLOWED_ORIGINS'] entry {entry!r} {problem}.")
        self.hint = hint


def _suggest(entry: str) -> str:
    """The origin the writer of ``entry`` (a host name, maybe with a port) most likely meant."""
    host = entry.strip().strip("/")
    if host.startswith("."):
        host = "*" + host
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    scheme = "http" if name in _LOCAL_HOSTS else "https"
    return f"{scheme}://{host}"


def _cleaned(scheme: str, rest: str, wildcard: bool) -> str | None:
    """The origin in ``scheme://rest`` with any user, path, query or fragment cut off."""
    try:
        netloc = urlsplit(f"{scheme}://{rest}").netloc.rpartition("@")[2]
    except ValueError:
        return None
    origin = parse_origin(f"{scheme}://{netloc}") if "*" not in netloc else None
    if origin is None:
        return None
    return str(origin).replace("://", "://*.", 1) if wildcard else str(origin)


def parse_allowed(entry: str) -> tuple[str, Origin]:
    """One entry of the setting, other than ``*`` and ``null``, as ``("exact" |
    "subdomains", origin)``; for subdomains, ``origin.host`` is the domain
    (``example.com`` for ``https://*.example.com``).

    Raises:
        OriginSettingError: ``entry`` is not an origin or a wildcard origin; the
            error's hint gives what to write.
    """
    if "://" not in entry:
        raise OriginSettingError(
            entry,
            "is a host name, not an origin (scheme://host[:port])",
            f"Write {_suggest(entry)!r} (or with http:// if its pages are served over plain "
            "HTTP). The site's own origin needs no entry.",
        )
    scheme, _, rest = entry.partition("://")
    if scheme.lower() in ("ws", "wss"):
        page = "https" if scheme.lower() == "wss" else "http"
        fix = _cleaned(page, rest.removeprefix("*."), rest.startswith("*."))
        raise OriginSettingError(
            entry,
            "is a socket URL: a browser sends the Origin of its page, http(s)://",
            f"Write {fix!r}." if fix else "Write the page's origin, http(s)://host[:port].",
        )
    wildcard = rest.startswith("*.")
    rest = rest.removeprefix("*.")
    origin = parse_origin(f"{scheme}://{rest}") if "*" not in rest else None
    if origin is None:
        fix = _cleaned(scheme, rest, wildcard)
        raise OriginSettingError(
            entry,
            "is not an origin (scheme://host[:port], nothing after it)",
            f"Write {fix!r}."
            if fix
            else "Write scheme://host[:port], e.g. 'https://chat.example.com', or "
            "'https://*.example.com' for a domain and its subdomains.",
        )
    return ("subdomains" if wildcard else "exact"), origin


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """The compiled setting: ``refusal(origin, scope)`` answers each handshake."""

    exact: frozenset[Origin]
    subdomains: frozenset[Origin]
    allow_null: bool
    allow_any: bool

    @classmethod
    def from_setting(cls, entries: Sequence[str] | None) -> OriginPolicy:
        """Compile ``ROOMCAST['ALLOWED_ORIGINS']`` (None: no origin besides the site's own).

        Raises:
            ImproperlyConfigured: an entry is not an origin (the system checks report
                the same, ``roomcast.E005``/``E011``, with a hint).
        """
        if entries is None:
            entries = []
        if not isinstance(entries, list | tuple) or not all(isinstance(e, str) for e in entries):
            raise ImproperlyConfigured(
                "ROOMCAST['ALLOWED_ORIGINS'] must be a list of origins such as "
                "'https://chat.example.com'."
            )
        exact: set[Origin] = set()
        subdomains: set[Origin] = set()
        for entry in entries:
            if entry in (ANY_ORIGIN, NULL_ORIGIN):
                continue
            try:
                kind, origin = parse_allowed(entry)
            except OriginSettingError as exc:
                raise ImproperlyConfigured(f"{exc} {exc.hint}") from None
            (exact if kind == "exact" else subdomains).add(origin)
        return cls(
            exact=frozenset(exact),
            subdomains=frozenset(subdomains),
            allow_null=NULL_ORIGIN in entries,
            allow_any=ANY_ORIGIN in entries,
        )

    def refusal(self, origin: str, scope: dict[str, Any]) -> str | None:
        """None if a browser page of ``origin`` may open this handshake's socket, else
        why not, one line for the server log (quoted values are cut to a bound)."""
        if self.allow_any:
            return None
        if origin == NULL_ORIGIN:
            return None if self.allow_null else f"Origin 'null' is not allowed{_LISTED}"
        parsed = parse_origin(origin)
        if parsed is None:
            return f"Origin {_quote(origin)} is not an origin"
        own, why_not_own = own_origin(scope)
        if parsed == own or parsed in self.exact:
            return None
        for allowed in self.subdomains:
            if (
                parsed.scheme == allowed.scheme
                and parsed.port == allowed.port
                and (parsed.host == allowed.host or parsed.host.endswith("." + allowed.host))
            ):
                return None
        if own is None:
            return f"Origin {_quote(origin)} is not allowed{_LISTED}, and {why_not_own}"
        hint = ""
        if (parsed.scheme, own.scheme, parsed.host) == ("https", "http", own.host):
            hint = " (behind a TLS proxy? see SECURE_PROXY_SSL_HEADER)"
        return (
            f"Origin {_quote(origin)} is not this site's origin {_quote(str(own))}{hint} "
            f"nor listed{_LISTED}"
        )


_LISTED = " in ROOMCAST['ALLOWED_ORIGINS']"


def _quote(value: str) -> str:
    """``value`` for a log line: repr (no raw newlines or escapes), at most a bound long."""
    if len(value) > LOG_VALUE_MAX_CHARS:
        return repr(value[:LOG_VALUE_MAX_CHARS]) + "..."
    return repr(value)


class _Handshake(HttpRequest):
    """The handshake as Django would see it as a request: for ``get_host()`` and
    ``scheme``, so that ALLOWED_HOSTS, USE_X_FORWARDED_HOST/PORT and
    SECURE_PROXY_SSL_HEADER mean here what they mean for every view."""

    def __init__(self, scope: dict[str, Any]) -> None:
        # Not HttpRequest.__init__: its QueryDicts and MultiValueDict took 11 of this
        # check's 21 us per handshake, and get_host() and scheme read only META
        # (tests/test_origins.py covers both on each Django this runs on).
        meta: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            key = "HTTP_" + name.decode("latin1").upper().replace("-", "_")
            text = value.decode("latin1")
            meta[key] = f"{meta[key]},{text}" if key in meta else text  # as ASGIRequest does
        server = scope.get("server") or ("unknown", "0")
        meta["SERVER_NAME"], meta["SERVER_PORT"] = str(server[0]), str(server[1])
        self.META = meta
        self._ws_scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"

    def _get_scheme(self) -> str:
        return self._ws_scheme


def own_origin(scope: dict[str, Any]) -> tuple[Origin | None, str]:
    """The origin of the site this handshake reached, or None and why it has none (its
    host does not pass ALLOWED_HOSTS)."""
    request = _Handshake(scope)
    try:
        host = request.get_host()
    except DisallowedHost:
        raw = request.META.get("HTTP_HOST") or "none"
        return None, f"the Host header {_quote(raw)} is not in ALLOWED_HOSTS"
    own = parse_origin(f"{request.scheme}://{host}")
    if own is None:  # get_host() validated it; only an odd port can get here
        return None, f"the Host header {_quote(host)} is not a host[:port]"
    return own, ""


def check_proxy_ssl_header() -> None:
    """Raise ImproperlyConfigured now for a SECURE_PROXY_SSL_HEADER that Django would
    reject on every handshake (it is read per request)."""
    _ = _Handshake({}).scheme
