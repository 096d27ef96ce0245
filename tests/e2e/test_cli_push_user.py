"""``roomcast push --user NAME TEXT`` against real servers: through the HTTP API (with
standard input, and the server's refusals in one line) and through Redis into
PostgreSQL; what was stored is read back with ``roomcast manage shell``."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_cli_push import cli
from tests.test_cli import one_line, run

pytestmark = pytest.mark.e2e

STREAM = (
    "import json; from django.contrib.auth import get_user_model as U; "
    "from roomcast.fanout import user_room; from roomcast.models import Message; "
    "uid = U().objects.get(username={name!r}).pk; "
    "print(json.dumps(list(Message.objects.filter(room__name=user_room(uid)).order_by('seq')"
    ".values_list('seq', 'kind', 'text'))))"
)


def stream(server: ServerProcess, name: str) -> list[list[object]]:
    """The user's stream as stored: [[seq, kind, text], ...]."""
    result = server.cli("manage", "shell", "-v", "0", "-c", STREAM.format(name=name))
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


async def test_push_user_over_http(serve) -> None:
    """Text and standard input reach the user's stream, each with the user's next seq;
    an unknown user and usage mistakes are one line each."""
    server = serve()
    made = await asyncio.to_thread(server.cli, "user", "create", "alice")
    assert made.returncode == 0, made.stderr
    http = ("--server", server.http_url)
    sent = await asyncio.to_thread(server.cli, "push", "--user", "alice", "export ready", *http)
    assert (sent.returncode, sent.stdout) == (0, "sent to user 'alice' as seq 1\n"), sent.stderr
    piped = await asyncio.to_thread(
        cli, server, "push", "--user", "alice", "-", *http, stdin="line one\nline two\n"
    )
    assert piped.stdout == "sent to user 'alice' as seq 2\n", piped.stderr
    assert await asyncio.to_thread(stream, server, "alice") == [
        [1, "system", "export ready"],
        [2, "system", "line one\nline two"],
    ]
    nobody = await asyncio.to_thread(server.cli, "push", "--user", "nobody", "hi", *http)
    assert nobody.returncode == 2
    assert nobody.stderr == (f"roomcast push: {server.http_url} answered 404: No user 'nobody'.\n")


@pytest.mark.redis
@pytest.mark.postgres
async def test_push_user_through_redis(cluster) -> None:
    """With ROOMCAST_REDIS_URL and no --server, the command stores into the servers'
    database and publishes through Redis itself."""
    (server,) = cluster(1)
    name = f"bob-{uuid.uuid4().hex[:8]}"  # the database is shared by the whole run
    made = await asyncio.to_thread(server.cli, "user", "create", name)
    assert made.returncode == 0, made.stderr
    sent = await asyncio.to_thread(server.cli, "push", "--user", name, "via redis")
    assert sent.stdout == f"sent to user {name!r} as seq 1\n", sent.stderr
    assert await asyncio.to_thread(stream, server, name) == [[1, "system", "via redis"]]
    nobody = await asyncio.to_thread(server.cli, "push", "--user", "nobody", "x")
    assert (nobody.returncode, nobody.stderr) == (
        2,
        "roomcast push: no user 'nobody' in this site's database\n",
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("push", "--user", "alice"), "roomcast push: the following arguments are required: TEXT"),
        (("push", "--user", "alice", "lobby", "hi"), "give TEXT alone, no ROOM"),
        (("push",), "the following arguments are required: ROOM, TEXT"),
        (("push", "--user", "", "hi"), "--user must be a username of 1 to 254 characters"),
        (("push", "--user", "alice", " "), "the message is empty"),
    ],
)
def test_push_user_usage_errors_are_one_line(tmp_path: Path, args, expected) -> None:
    line = one_line(run(tmp_path, *args), 2)
    assert expected in line, line
