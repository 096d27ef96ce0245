"""``roomcast room`` / ``token`` against a real ``roomcast serve``: ``--server`` through the
HTTP management API, the same answers as on the database; the API key kept out of logs
and error lines; and (after merging the server side) changes that close live sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import free_port, wait_for_port
from tests.e2e.conftest import ROOMCAST

pytestmark = pytest.mark.e2e


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0 and result.stderr == "", (result.returncode, result.stderr)
    return result.stdout


async def cli(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(server.cli, *args)


async def test_room_and_token_commands_through_the_server(serve) -> None:
    """--server gives what the database way gives, and the server's refusals by detail."""
    server = serve()
    http = ("--server", server.http_url)
    for name in ("alice", "bob"):
        ok(await cli(server, "user", "create", name))
    assert ok(await cli(server, "room", "create", "board", "--private", *http)) == (
        "created room 'board' (private)\n"
    )
    assert ok(await cli(server, "room", "members", "board", "add", "alice", "bob", *http)) == (
        "added alice, bob to 'board' as members\n"
    )
    assert ok(await cli(server, "room", "members", "board", "remove", "bob", *http)) == (
        "removed bob from 'board'\n"
    )
    assert ok(await cli(server, "room", "members", "board", "remove", "bob", *http)) == (
        "bob was not a member of 'board'\n"
    )
    remote = json.loads(ok(await cli(server, "room", "show", "board", "--json", *http)))
    local = json.loads(ok(await cli(server, "room", "show", "board", "--json")))
    assert (
        remote
        == local
        == {
            "name": "board",
            "visibility": "private",
            "members": [{"user": "alice", "role": "member"}],
            "message_count": 0,
            "last_seq": 0,
        }
    )
    assert ok(await cli(server, "room", "set", "board", "--read-only", *http)) == (
        "room 'board' is read-only now\n"
    )
    # Through the server: no note about Redis (the server closes the sockets itself).
    result = await cli(server, "room", "members", "board", "remove", "alice", *http)
    assert ok(result) == "removed alice from 'board'\n"

    refusals = {
        ("room", "create", "board", *http): "answered 409: Room 'board' exists already.",
        ("room", "show", "nowhere", *http): "answered 404: No room 'nowhere'.",
        ("room", "members", "board", "add", "dave", *http): "answered 404: No user 'dave'.",
        ("room", "create", "x" * 201, *http): "answered 400: Room names are limited to 200",
        ("token", "dave", *http): "answered 404: No user 'dave'.",
    }
    for args, expected in refusals.items():
        result = await cli(server, *args)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1

    token = ok(await cli(server, "token", "alice", "--ttl", "300", *http)).strip()
    checked = ok(
        await cli(
            server, "manage", "shell", "-v", "0", "-c",
            f"from roomcast.auth import verify_token as v; print(v({token!r})[0].username)",
        )
    )  # fmt: skip
    assert checked == "alice\n"


def start_debug_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """roomcast serve logging everything: every request line, every 4xx warning."""
    env = {**os.environ, "ROOMCAST_DATA_DIR": str(data_dir)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    with open(data_dir / "serve.log", "wb") as log:
        return subprocess.Popen(
            [ROOMCAST, "serve", "--port", str(port), "--log-level", "debug", "--access-log"],
            env=env,
            cwd=data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_api_keys_and_tokens_stay_out_of_logs_and_error_lines(
    tmp_path: Path, clients: Any
) -> None:
    """At --log-level debug with the access log (every handshake header, every request
    line), requests with the right key, a wrong key and a token, in a header or in the
    URL, leave none of them in the log; a refused key is not echoed by the CLI."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    proc = start_debug_server(data_dir, port)
    try:
        await asyncio.to_thread(wait_for_port, port, timeout=30, proc=proc)
        base = f"http://127.0.0.1:{port}"
        key = (data_dir / "api_key").read_text().strip()
        assert oct((data_dir / "api_key").stat().st_mode & 0o777) == "0o600"
        wrong = "wrong-key-" + "z" * 30

        def call(method: str, path: str, body: Any, bearer: str) -> tuple[int, Any]:
            request = urllib.request.Request(
                base + path,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
                method=method,
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status), json.loads(response.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return int(exc.code), json.loads(exc.read())

        def command(*args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "ROOMCAST_DATA_DIR": str(data_dir)}
            env.pop("DJANGO_SETTINGS_MODULE", None)
            return subprocess.run(
                [ROOMCAST, *args], env=env, cwd=data_dir, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip

        made = await asyncio.to_thread(command, "user", "create", "alice")
        assert made.returncode == 0, made.stderr
        answers = [
            await asyncio.to_thread(call, "POST", "/api/rooms", {"name": "board"}, key),
            await asyncio.to_thread(call, "POST", "/api/rooms", {"name": "x"}, wrong),
            await asyncio.to_thread(call, "GET", "/api/rooms/nowhere", None, key),
            await asyncio.to_thread(call, "POST", "/api/tokens", {"user": "alice"}, wrong),
            await asyncio.to_thread(call, "POST", "/api/tokens", {"user": "alice"}, key),
        ]
        assert [status for status, _ in answers] == [201, 401, 404, 401, 201]
        token = answers[-1][1]["token"]
        # A socket that authenticates with the token, in a header (as a CLI client would).
        client = await clients(
            f"ws://127.0.0.1:{port}/ws/chat/board/",
            additional_headers={"Authorization": f"Bearer {token}"},
        )
        await client.recv()
        await client.ws.close()
        # And one that puts it in the URL (refused, but the request line carries it).
        in_url = await clients(f"ws://127.0.0.1:{port}/ws/chat/board/?token={token}")
        await in_url.ws.close()
        result = await asyncio.to_thread(
            command, "room", "show", "board", "--server", base, "--api-key", wrong
        )
        assert result.returncode == 2 and "answered 401" in result.stderr
        assert "--api-key" in result.stderr and wrong not in result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
    log = (data_dir / "serve.log").read_text(errors="replace")
    assert '"POST /api/rooms HTTP/1.1" 201' in log and "Unauthorized: /api/rooms" in log, log
    for secret in (key, wrong, token):
        assert secret not in log
    assert "< authorization: [redacted]" in log.lower()  # the header line is there, blank
    assert "/ws/chat/board/?token=[redacted]" in log


# -- live sockets (after merging) --------------------------------------------------------------


async def token_socket(server: Any, clients: Any, room: str, user: str) -> Any:
    token = ok(await cli(server, "token", user)).strip()
    client = await clients(
        server.ws_url(room), additional_headers={"Authorization": f"Bearer {token}"}
    )
    assert (await client.recv())["type"] == "joined"
    return client


async def closed_within(client: Any, seconds: float) -> tuple[int, str]:
    """The close code and reason the server sends within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            async for _ in client.ws:
                pass
    except websockets.ConnectionClosed:
        pass  # websockets raises for any close but 1000/1001: the code is the answer
    except TimeoutError:
        raise AssertionError(f"the socket was still open after {seconds} s") from None
    return client.ws.close_code, client.ws.close_reason


@pytest.mark.redis
async def test_a_member_removed_on_the_database_loses_the_socket_through_redis(
    serve, clients, redis_server, redis_prefix
) -> None:
    """The command's own process announces the change; the servers hear it on Redis."""
    server = serve(ROOMCAST_REDIS_URL=redis_server.url, ROOMCAST_REDIS_PREFIX=redis_prefix)
    ok(await cli(server, "user", "create", "alice"))
    ok(await cli(server, "room", "create", "board", "--private"))
    ok(await cli(server, "room", "members", "board", "add", "alice"))
    alice = await token_socket(server, clients, "board", "alice")
    ok(await cli(server, "room", "members", "board", "remove", "alice"))  # no note: Redis
    code, reason = await closed_within(alice, 1.5)
    assert (code, reason) == (4403, "not allowed in this room any more")


async def test_a_room_made_private_through_the_server_closes_non_members(serve, clients) -> None:
    """Without Redis, --server makes the change inside the server, which closes them."""
    server = serve()
    for name in ("alice", "bob"):
        ok(await cli(server, "user", "create", name))
    ok(await cli(server, "room", "create", "board"))
    ok(await cli(server, "room", "members", "board", "add", "alice"))
    alice = await token_socket(server, clients, "board", "alice")
    bob = await token_socket(server, clients, "board", "bob")
    ok(await cli(server, "room", "set", "board", "--private", "--server", server.http_url))
    code, _ = await closed_within(bob, 1.5)
    assert code == 4403
    await alice.send({"type": "message", "message": "still here", "client_id": "c1"})
    assert (await alice.recv_type("message"))["message"] == "still here"
