"""Connection tokens: signed, expiring proof of who a client is, for clients with no
session cookie (a CLI, a mobile app, a page on another origin).

Layer: services. ``issue_token(user, ttl=...)`` gives a string; the client sends it in
the ``Authorization: Bearer TOKEN`` header of the WebSocket handshake, or in its first
frame (``{"type": "auth", "token": TOKEN}``), never in the URL (URLs end up in proxy
logs). :func:`verify_token` turns it back into the user, or raises a
:class:`TokenError` that names what is wrong.

A token is Django's signing of ``{"u": user id, "e": expiry, "h": hash}`` with the
project's ``SECRET_KEY`` (``django.core.signing``, salted, so no other signed value of the
project passes as a token). ``h`` comes from the user's password hash, as Django's
password-reset tokens do: changing the password ends every token issued before. Nothing
is stored server-side: a token cannot be revoked one by one, so keep lifetimes short
(``TOKEN_TTL_SECS``, one hour by default) and let clients fetch new ones
(``roomcast.js`` takes a ``getToken()`` callback for that).
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.utils.crypto import salted_hmac

from .conf import roomcast_settings
from .exceptions import RoomcastError

__all__ = [
    "InactiveUserError",
    "InvalidTokenError",
    "TokenError",
    "TokenExpiredError",
    "issue_token",
    "verify_token",
]

_SALT = "roomcast.auth.token"
#: Longest token accepted, in characters: a real one is about 100; anything much longer
#: is not worth verifying.
TOKEN_MAX_CHARS = 512


class TokenError(RoomcastError):
    """A token that does not let its bearer in; ``code`` names why (for the close reason)."""

    code = "invalid_token"


class InvalidTokenError(TokenError):
    """Forged, damaged, or for a user that no longer exists or changed password."""

    code = "invalid_token"


class TokenExpiredError(TokenError):
    """Past its expiry: get a fresh one."""

    code = "token_expired"


class InactiveUserError(TokenError):
    """The token's user is inactive (``is_active=False``)."""

    code = "inactive_user"


def _fingerprint(user: Any) -> str:
    # Changes when the password does (or is set unusable): old tokens stop working.
    return salted_hmac(_SALT, f"{user.pk}:{user.password}").hexdigest()[:16]


def issue_token(user: Any, *, ttl: float | None = None) -> str:
    """A token for ``user``, valid for ``ttl`` seconds (default ``TOKEN_TTL_SECS``).

    Raises:
        ValueError: ``user`` is not a saved, active user, or ``ttl`` is not positive.
    """
    if user is None or getattr(user, "pk", None) is None or not user.is_authenticated:
        raise ValueError("Tokens are issued for saved user accounts only.")
    if not user.is_active:
        raise ValueError(f"User {user.get_username()!r} is inactive.")
    ttl = float(roomcast_settings.TOKEN_TTL_SECS if ttl is None else ttl)
    if not ttl > 0:
        raise ValueError("ttl must be a positive number of seconds.")
    expires = int(time.time() + ttl)
    payload = {"u": user.pk, "e": expires, "h": _fingerprint(user)}
    return signing.dumps(payload, salt=_SALT, compress=False)


def read_token(token: str) -> tuple[int, float, str]:
    """``(user id, expiry, fingerprint)`` of a token whose signature is good.

    Raises:
        InvalidTokenError: forged, damaged or too long.
        TokenExpiredError: past its expiry.
    """
    if not isinstance(token, str) or not 0 < len(token) <= TOKEN_MAX_CHARS:
        raise InvalidTokenError("The token is missing or not a token.")
    try:
        payload = signing.loads(token, salt=_SALT)
        user_id, expires, fingerprint = payload["u"], payload["e"], payload["h"]
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise InvalidTokenError("The token is not valid here.") from None
    if not isinstance(user_id, int) or not isinstance(expires, int | float):
        raise InvalidTokenError("The token is not valid here.")
    if expires <= time.time():
        raise TokenExpiredError("The token has expired: get a new one.")
    return user_id, float(expires), str(fingerprint)


def verify_token(token: str) -> tuple[Any, float]:
    """The user a token names and when it expires (Unix time). Uses the database.

    Raises:
        InvalidTokenError, TokenExpiredError, InactiveUserError.
    """
    user_id, expires, fingerprint = read_token(token)
    model = get_user_model()
    try:
        # get(), not filter().first(): first() orders by the key, and the ORM's work for
        # that was 350 µs of a token check's 370 (get: 200), on every token connect.
        user = model._default_manager.get(pk=user_id)
    except model.DoesNotExist:
        user = None
    if user is None or _fingerprint(user) != fingerprint:
        raise InvalidTokenError("The token is not valid here.")
    if not user.is_active:
        raise InactiveUserError("The token's user is inactive.")
    return user, expires
