"""The HTTP API's client, for ``roomcast push`` and ``disconnect``, and for ``roomcast
room`` and ``token`` with ``--server``: the key, the request, and one line for each way
the call can fail, the server's own ``detail`` first.

Layer: command line; the standard library only (``urllib``), so pushing over HTTP needs
no extra.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ._common import EXIT_FAILED, EXIT_USAGE, CommandError

DEFAULT_SERVER = "http://127.0.0.1:8000"
#: Longest wait for the server's answer, in seconds: a push is stored before the answer,
#: and a server that has not answered by then is stuck (its store queue is bounded).
HTTP_TIMEOUT_SECS = 30
#: Most bytes read from a server's answer: a push API reply is under 200 bytes, an error
#: page of a proxy a few KB, but a room's answer lists its members (about 40 bytes each).
REPLY_MAX_BYTES = 16 * 1024 * 1024


def server_url(args: argparse.Namespace) -> str:
    """``--server`` (or the default) without a trailing slash, checked to be an HTTP URL."""
    server = str(args.server or DEFAULT_SERVER).rstrip("/")
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CommandError(
            f"--server {server!r} is not an http:// or https:// URL; e.g. {DEFAULT_SERVER}"
        )
    return server


def _api_key(args: argparse.Namespace) -> tuple[str, str]:
    """The HTTP push API key, and where it came from (for the error if it is refused)."""
    if args.api_key:
        return str(args.api_key), "--api-key"
    if os.environ.get("ROOMCAST_API_KEY"):
        return os.environ["ROOMCAST_API_KEY"], "ROOMCAST_API_KEY"
    # The bundled site keeps its key in its data dir. Read, never created here: a new
    # key would only be refused.
    data_dir = Path(os.environ.get("ROOMCAST_DATA_DIR") or Path.cwd() / ".roomcast")
    path = data_dir.resolve() / "api_key"
    try:
        return path.read_text().strip(), str(path)
    except (FileNotFoundError, NotADirectoryError):
        raise CommandError(
            f"no API key: {path} does not exist. Pass --api-key (or set ROOMCAST_API_KEY), "
            "or run this where the server's .roomcast/ is (or set ROOMCAST_DATA_DIR to it)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read the API key from {path}: {exc}") from None


def call(args: argparse.Namespace, room: str, action: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to ``/api/rooms/<room>/<action>`` of ``--server`` with the API key;
    the JSON answer, or a CommandError."""
    return request(args, "POST", f"/api/rooms/{quote(room)}/{action}", body)


def quote(name: str) -> str:
    """A room or user name as one segment of an API path."""
    return urllib.parse.quote(name, safe="")


def request(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    bearer: str | None = None,
) -> Any:
    """``method`` ``path`` (with ``body`` as JSON) on ``--server`` with the API key, or
    as the user of the token ``bearer`` when one is given; the JSON answer, or a
    CommandError."""
    server = server_url(args)
    url = f"{server}{path}"
    if bearer is None:
        key, source = _api_key(args)
    else:
        key, source = bearer, None
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    http_request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(http_request, timeout=HTTP_TIMEOUT_SECS) as response:
            reply = response.read(REPLY_MAX_BYTES)
    except urllib.error.HTTPError as exc:
        raise _refused(exc, server, source) from None
    except urllib.error.URLError as exc:
        raise CommandError(
            f"no roomcast server at {server} ({exc.reason}): start one with `roomcast "
            "serve`, or pass --server URL",
            EXIT_FAILED,
        ) from None
    except TimeoutError:
        raise CommandError(
            f"{server} did not answer within {HTTP_TIMEOUT_SECS} s; is it overloaded?",
            EXIT_FAILED,
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise CommandError(
            f"{server} did not answer like an HTTP server ({exc or type(exc).__name__}): "
            "is --server the "
            "roomcast server's URL?",
            EXIT_FAILED,
        ) from None
    try:
        return json.loads(reply)
    except ValueError:
        raise CommandError(
            f"{url} answered with something other than JSON: is --server a roomcast server?",
            EXIT_FAILED,
        ) from None


def _refused(exc: urllib.error.HTTPError, server: str, source: str | None) -> CommandError:
    """One line for an error answer: the API's ``detail``, or what a non-API answer means.
    ``source`` is where the API key came from, None for a user's token."""
    body = exc.read(REPLY_MAX_BYTES)
    code = EXIT_USAGE if 400 <= exc.code < 500 and exc.code not in (408, 429) else EXIT_FAILED
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if source is None:  # a user's token: the reading API
        if not isinstance(detail, str):
            detail = (
                "no roomcast API there; is --server the roomcast server's URL?"
                if exc.code in (404, 405)
                else str(exc.reason)
            )
        elif exc.code == 401:
            detail = f"the token was refused: {detail} Get a new one with `roomcast token NAME`."
    elif not isinstance(detail, str):  # not the push API: another site, a proxy, an old server
        if exc.code in (404, 405):
            detail = (
                "no roomcast push API there; is --server the roomcast server's URL (its "
                "site must include roomcast.urls)?"
            )
        else:
            plain = exc.headers.get_content_type() == "text/plain"
            text = body.decode("utf-8", "replace") if plain else ""
            detail = " ".join(text.split())[:200] or str(exc.reason)
    elif exc.code == 413:
        detail = f"the message is too long: {detail}"
    elif exc.code == 401:
        detail = f"{detail} The key came from {source}: pass the server's key with --api-key."
    return CommandError(f"{server} answered {exc.code}: {detail}", code)
