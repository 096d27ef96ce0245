"""The wire side of access control: the connect query (since, auth, no tokens) and the
auth frame. Pure functions, no server."""

from __future__ import annotations

import pytest

from roomcast.protocol import (
    CloseCode,
    ConnectQuery,
    InvalidFrameError,
    InvalidQueryError,
    InvalidSinceError,
    TokenInURLError,
    parse_connect_query,
    parse_frame,
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", ConnectQuery(since=None, auth=False)),
        (b"auth=1", ConnectQuery(since=None, auth=True)),
        (b"since=7&auth=1", ConnectQuery(since=7, auth=True)),
        ("auth=0&since=0", ConnectQuery(since=0, auth=False)),
        (b"auth=0&auth=1", ConnectQuery(since=None, auth=True)),  # the last one counts
    ],
)
def test_parse_connect_query(query, expected):
    """since= and auth= are read from the room socket's query string."""
    assert parse_connect_query(query) == expected


@pytest.mark.parametrize("query", ["token=abc", "since=1&token=", "access_token=x", "token"])
def test_a_token_in_the_url_is_refused(query):
    """token= (even empty, even valueless) is refused with 4400 saying where tokens go."""
    with pytest.raises(TokenInURLError) as info:
        parse_connect_query(query)
    assert info.value.close_code == CloseCode.BAD_REQUEST
    assert info.value.detail == (
        "tokens go in the Authorization header or the first frame (auth), not the URL"
    )


@pytest.mark.parametrize(
    ("query", "error"),
    [("auth=yes", InvalidQueryError), ("auth=", InvalidQueryError), ("since=x", InvalidSinceError)],
)
def test_bad_connect_queries_are_4400(query, error):
    """auth= other than 1 or 0, and a bad since=, close with 4400."""
    with pytest.raises(error) as info:
        parse_connect_query(query)
    assert info.value.close_code == CloseCode.BAD_REQUEST


def test_the_auth_frame():
    """{"type": "auth", "token": T} parses; a token that is not a non-empty string does not."""
    assert parse_frame('{"type": "auth", "token": "t.k"}', max_bytes=100) == {
        "type": "auth",
        "token": "t.k",
    }
    for bad in ('{"type": "auth"}', '{"type": "auth", "token": ""}', '{"type":"auth","token":[]}'):
        with pytest.raises(InvalidFrameError, match='"token" must be a non-empty string'):
            parse_frame(bad, max_bytes=100)
