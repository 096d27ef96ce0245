"""``roomcast push`` / ``disconnect`` / ``manage roomcast_push`` against a real server:
standard input, the server's refusals shown by their detail, one user's sockets closed."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
import websockets

from tests.e2e.conftest import ROOMCAST, ServerProcess

pytestmark = pytest.mark.e2e


def cli(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``roomcast ARGS`` in the server's data dir, ``stdin`` on its standard input."""
    env = {**os.environ, "ROOMCAST_DATA_DIR": str(server.data_dir), **server.env}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [ROOMCAST, *args],
        env=env,
        cwd=server.data_dir,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    (line,) = result.stderr.splitlines()
    return line


async def test_push_reads_standard_input(serve, clients) -> None:
    server = serve()
    member = await clients(server.ws_url("deploys"))
    await member.recv_type("joined")
    text = "release 1.2 is out\n\nnotes: café, 技术\n"
    result = await asyncio.to_thread(cli, server, "push", "deploys", "-", "--server",
                                     server.http_url, stdin=text)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pushed to 'deploys' as seq 1\n"
    (frame,) = await member.messages(1)
    assert frame["message"] == "release 1.2 is out\n\nnotes: café, 技术"  # trailing \n dropped


async def test_the_servers_refusals_are_shown_by_their_detail(serve) -> None:
    server = serve()
    http = ("--server", server.http_url)
    too_long = await asyncio.to_thread(cli, server, "push", "lobby", "-", *http, stdin="x" * 20000)
    assert refused(too_long) == (
        f"roomcast push: {server.http_url} answered 413: the message is too long: The body is "
        "limited to 16384 bytes."
    )
    long_name = await asyncio.to_thread(cli, server, "push", "r" * 201, "hi", *http)
    assert refused(long_name).endswith("answered 400: Room names are limited to 200 characters.")
    not_api = await asyncio.to_thread(
        cli, server, "push", "lobby", "hi", "--server", f"{server.http_url}/somewhere"
    )
    assert "answered 404: no roomcast push API there" in refused(not_api)
    wrong_key = await asyncio.to_thread(
        cli, server, "push", "lobby", "hi", *http, "--api-key", "w" * 20
    )
    assert "answered 401: " in refused(wrong_key) and "came from --api-key" in refused(wrong_key)
    elsewhere = serve(ROOMCAST_ALLOWED_HOSTS="chat.example.com")
    wrong_host = await asyncio.to_thread(
        cli, server, "push", "lobby", "hi", "--server", elsewhere.http_url
    )
    assert refused(wrong_host) == (
        f"roomcast push: {elsewhere.http_url} answered 400: Bad Request (400): this server "
        "does not answer to the host name in this request. Its log names the variable that "
        "allows it."
    )


@pytest.mark.parametrize("by", ["--user-id", "--user"])
async def test_disconnect_one_user(serve, clients, by) -> None:
    """--user-id or --user closes that user's sockets (4000) and leaves the other members;
    a username the site does not know is one line saying so."""
    server = serve()
    made = await asyncio.to_thread(
        cli,
        server,
        "manage",
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model\n"
        "from django.contrib.sessions.backends.db import SessionStore\n"
        "user = get_user_model().objects.create_user('ann')\n"
        "s = SessionStore()\n"
        "s.update({'_auth_user_id': str(user.pk), '_auth_user_backend': "
        "'django.contrib.auth.backends.ModelBackend', '_auth_user_hash': "
        "user.get_session_auth_hash()})\n"
        "s.create()\n"
        "print(user.pk, s.session_key)",
    )
    assert made.returncode == 0, made.stderr
    user_id, session_key = made.stdout.split()[-2:]  # after "N objects imported..."
    room = "moderated"
    ann = await clients(
        server.ws_url(room), additional_headers={"Cookie": f"sessionid={session_key}"}
    )
    other = await clients(server.ws_url(room))
    for member in (ann, other):
        await member.recv_type("joined")
    who = user_id if by == "--user-id" else "ann"
    nobody = await asyncio.to_thread(
        cli, server, "disconnect", room, "--user", "nobody", "--server", server.http_url
    )
    assert nobody.returncode != 0 and "No user 'nobody'" in nobody.stderr, nobody.stderr
    kicked = await asyncio.to_thread(
        cli, server, "disconnect", room, by, who, "--reason", "spam",
        "--server", server.http_url,
    )  # fmt: skip
    assert kicked.returncode == 0, kicked.stderr
    whose = f"user {user_id}'s sockets" if by == "--user-id" else "ann's sockets"
    assert kicked.stdout == f"asked every server to close {whose} in {room!r}\n"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await ann.recv(timeout=10)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "spam")
    pushed = await asyncio.to_thread(cli, server, "push", room, "still here?", "--server",
                                     server.http_url)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert [f["message"] for f in await other.messages(1)] == ["still here?"]


async def test_manage_roomcast_push(serve) -> None:
    """The management command stores the message (stdin too) in the site's database."""
    server = serve()
    help_text = await asyncio.to_thread(cli, server, "manage", "roomcast_push", "--help")
    assert "standard input" in help_text.stdout and "Example:" in help_text.stdout
    first = await asyncio.to_thread(cli, server, "manage", "roomcast_push", "ops", "-", stdin="a\n")
    assert first.stdout.strip() == "pushed to 'ops' as seq 1", first.stderr
    bad = await asyncio.to_thread(cli, server, "manage", "roomcast_push", "a/b", "x")
    assert refused(bad, 1) == "CommandError: Room names cannot contain '/'."
    second = await asyncio.to_thread(cli, server, "push", "ops", "b", "--server", server.http_url)
    assert second.stdout.strip() == "pushed to 'ops' as seq 2", second.stderr
