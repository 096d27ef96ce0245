"""Real ``roomcast serve`` processes sharing rooms through a private Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import websockets

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def cluster(cluster):
    """conftest's cluster, posting faster than a person types: these tests test delivery;
    the post rate limits have tests of their own (test_limits_rate.py)."""

    def start(n: int = 2, layer: str = "pubsub"):
        return cluster(n, layer, ROOMCAST_POST_RATE_PER_SOCKET="0")

    return start


def unique(name: str) -> str:
    """A room name of its own for this test (the database lives for the whole run)."""
    return f"{name} {uuid.uuid4().hex[:6]}"


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_two_processes_share_a_unicode_room(cluster, clients, layer):
    """Members on two processes see every message from both, in seq order, once."""
    a, b = cluster(2, layer)
    room = unique("技术交流 café")
    members = [await clients(server.ws_url(room)) for server in (a, b, a, b)]
    for member in members:
        assert (await member.recv_type("joined"))["seq"] == 0
    sender_a, sender_b = members[0], members[1]
    for i in range(20):
        await (sender_a if i % 2 == 0 else sender_b).send({"message": f"m{i} 你好"})
    for member in members:
        frames = await member.messages(20)
        assert [f["seq"] for f in frames] == list(range(1, 21))
        assert sorted(f["message"] for f in frames) == sorted(f"m{i} 你好" for i in range(20))
        assert all(f["room"] == room for f in frames)


async def test_reconnect_to_the_other_process_with_since(cluster, clients):
    """A client that drops off one process and comes back to another gets exactly what it missed."""
    a, b = cluster(2)
    room = unique("reconnect")
    talker = await clients(b.ws_url(room))
    await talker.recv_type("joined")
    roamer = await clients(a.ws_url(room))
    await roamer.recv_type("joined")
    for i in range(1, 6):
        await talker.send({"message": f"m{i}"})
    seen = await roamer.messages(5)
    last = seen[-1]["seq"]
    await roamer.ws.close()
    for i in range(6, 11):
        await talker.send({"message": f"m{i}"})
    await talker.messages(10)
    back = await clients(b.ws_url(room, since=last))
    joined = await back.recv_type("joined")
    assert joined["recovered"] is True and joined["seq"] == 10
    replay = await back.messages(5)
    assert [f["message"] for f in replay] == [f"m{i}" for i in range(6, 11)]
    await talker.send({"message": "live"})
    assert [f["seq"] for f in await back.messages(1)] == [11]


async def test_a_message_resent_to_the_other_process_is_stored_once(cluster, clients):
    """On PostgreSQL: a client that sent on one process and resends the same client_id on
    another (its ack never came) gets the first seq back; the room has one copy, no gap."""
    a, b = cluster(2)
    room = unique("resend")
    watcher = await clients(a.ws_url(room))
    await watcher.recv_type("joined")
    for server in (a, b):
        sender = await clients(server.ws_url(room))
        await sender.recv_type("joined")
        await sender.send({"type": "message", "message": "only once", "client_id": "resend-1"})
        while (frame := await sender.recv())["type"] != "ack":
            pass
        assert frame["seq"] == 1
        await sender.ws.close()
    sender = await clients(b.ws_url(room))
    await sender.recv_type("joined")
    await sender.send({"message": "after"})
    assert [(f["seq"], f["message"]) for f in await watcher.messages(2)] == [
        (1, "only once"),
        (2, "after"),
    ]


async def test_concurrent_posters_share_rooms_on_postgres(cluster, clients):
    """30 posters on two processes send back to back into 3 new rooms, each also
    resending one of its messages: batches pipelined on PostgreSQL store each message
    once, every room's seqs are dense, each poster's messages keep their order, and a
    watcher on each room sees the stream in seq order."""
    a, b = cluster(2)
    rooms = [unique(f"batch {i}") for i in range(3)]
    watchers = [await clients(a.ws_url(room)) for room in rooms]
    for watcher in watchers:
        await watcher.recv_type("joined")
    posters = [await clients((a, b)[n % 2].ws_url(rooms[n % 3])) for n in range(30)]
    for poster in posters:
        await poster.recv_type("joined")

    async def post(n: int, poster) -> list[tuple[str, int]]:
        for i in range(10):
            frame = {"type": "message", "message": f"p{n} m{i}", "client_id": f"p{n}-{i}"}
            await poster.send(frame)
        await poster.send({"type": "message", "message": "again", "client_id": f"p{n}-4"})
        acks: list[tuple[str, int]] = []
        while len(acks) < 11:
            frame = await poster.recv(timeout=30)
            assert frame["type"] in ("message", "ack"), frame
            if frame["type"] == "ack":
                acks.append((frame["client_id"], frame["seq"]))
        return acks

    acked = await asyncio.gather(*(post(n, p) for n, p in enumerate(posters)))
    for acks in acked:
        assert [cid for cid, _ in acks[:10]] == [f"{acks[0][0][:-2]}-{i}" for i in range(10)]
        seqs = [seq for _, seq in acks[:10]]
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        assert acks[10] == acks[4]  # the resend gets the stored message's seq back
    for r, watcher in enumerate(watchers):
        frames = await watcher.messages(100, timeout=30)
        assert [f["seq"] for f in frames] == list(range(1, 101))
        by_seq = {seq: cid for n, acks in enumerate(acked) if n % 3 == r for cid, seq in acks}
        assert {f["seq"]: f["client_id"] for f in frames} == by_seq


async def test_roomcast_push_reaches_members_of_both_processes(cluster, clients):
    """`roomcast push` (through Redis, and over HTTP) reaches members on both processes."""
    a, b = cluster(2)
    room = unique("公告 announcements")
    members = [await clients(server.ws_url(room)) for server in (a, b)]
    for member in members:
        await member.recv_type("joined")
    direct = await asyncio.to_thread(a.cli, "push", room, "direct via redis")
    assert direct.returncode == 0, direct.stderr
    assert "as seq 1" in direct.stdout
    http = await asyncio.to_thread(a.cli, "push", room, "over http", "--server", b.http_url)
    assert http.returncode == 0, http.stderr
    for member in members:
        frames = await member.messages(2)
        assert [(f["seq"], f["message"], f["kind"]) for f in frames] == [
            (1, "direct via redis", "system"),
            (2, "over http", "system"),
        ]
    kicked = await asyncio.to_thread(b.cli, "disconnect", room)
    assert kicked.returncode == 0, kicked.stderr
    for member in members:
        with pytest.raises(Exception) as info:
            await member.recv(timeout=10)
        assert getattr(info.value, "rcvd", None) is not None and info.value.rcvd.code == 4000


async def test_roomcast_push_through_redis_refuses_another_database(cluster, clients):
    """`roomcast push` with the servers' Redis but not their database (it would store in
    its own SQLite file, and the message would reach nobody) refuses, naming both."""
    (server,) = cluster(1)
    room = unique("wrong db")
    member = await clients(server.ws_url(room))
    await member.recv_type("joined")
    wrong = await asyncio.to_thread(
        server.cli, "push", room, "lost?", without=["ROOMCAST_DATABASE_URL"]
    )
    assert wrong.returncode != 0
    assert "--database" in wrong.stderr and "postgresql://" in wrong.stderr, wrong.stderr
    right = await asyncio.to_thread(server.cli, "push", room, "found")
    assert right.returncode == 0, right.stderr
    assert [(f["seq"], f["message"]) for f in await member.messages(1)] == [(1, "found")]


async def test_malformed_frame_storm_does_not_disturb_the_room(cluster, clients):
    """One client floods bad frames while others chat on both processes: nothing is lost."""
    a, b = cluster(2)
    room = unique("storm")
    chatters = [await clients(server.ws_url(room)) for server in (a, b)]
    stormer = await clients(a.ws_url(room))
    for ws in (*chatters, stormer):
        await ws.recv_type("joined")
    bad = [
        "not json",
        "[]",
        "{}",
        '{"message": 1}',
        '{"type": "x"}',
        '{"message": "\\ud800"}',
        "\x00",
    ]

    async def storm() -> int:
        for i in range(300):
            await stormer.send(bad[i % len(bad)])
        errors = 0
        while errors < 300:
            frame = await stormer.recv()
            if frame["type"] == "error":
                errors += 1
        return errors

    async def chat() -> None:
        for i in range(30):
            await chatters[i % 2].send({"message": f"c{i}"})

    errors, _ = await asyncio.gather(storm(), chat())
    assert errors == 300
    for ws in chatters:
        frames = await ws.messages(30)
        assert [f["seq"] for f in frames] == list(range(1, 31))
    await stormer.send({"message": "storm over"})
    for ws in chatters:
        assert (await ws.messages(1))[0]["message"] == "storm over"
    for server in (a, b):
        assert "Traceback" not in server.log()


async def test_lost_database_connections_are_replaced_and_resends_land_once(
    cluster, clients, postgres_database
):
    """PostgreSQL drops every connection of the server (as on a database restart).
    Posters keep sending, resending with the same client_id after an error frame: every
    message is stored exactly once, the room's seqs stay dense, and a member joining
    afterwards gets it all from the database."""
    import psycopg

    (server,) = cluster(1)
    room = unique("db drop")
    watcher = await clients(server.ws_url(room))
    await watcher.recv_type("joined")
    posters = [await clients(server.ws_url(room)) for _ in range(4)]
    for poster in posters:
        await poster.recv_type("joined")
    await posters[0].send({"type": "message", "message": "before", "client_id": "before"})
    while (frame := await posters[0].recv())["type"] != "ack":
        pass
    assert frame["seq"] == 1
    name = postgres_database.rpartition("/")[2]
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1

    async def post(n: int, poster) -> int:
        errors = 0
        for i in range(5):
            cid = f"p{n}-{i}"
            while True:
                await poster.send({"type": "message", "message": cid, "client_id": cid})
                while (frame := await poster.recv(timeout=30))["type"] == "message":
                    pass
                assert frame.get("client_id") == cid, frame
                if frame["type"] == "ack":
                    break
                assert frame["type"] == "error" and frame["code"] == "internal_error", frame
                errors += 1
                assert errors <= 5, "the server did not recover its database connections"
        return errors

    await asyncio.gather(*(post(n, p) for n, p in enumerate(posters)))
    late = await clients(server.ws_url(room))
    await late.recv_type("joined")
    history = await late.messages(21)
    assert [f["seq"] for f in history] == list(range(1, 22))
    assert sorted(f["client_id"] for f in history) == sorted(
        ["before", *(f"p{n}-{i}" for n in range(4) for i in range(5))]
    )


async def test_a_room_locked_by_a_long_transaction_holds_up_only_itself(
    cluster, clients, postgres_database
):
    """Another transaction (a push inside a long ``transaction.atomic()``) holds a room's
    row lock. Posts to that room wait, set aside and tried again, while posts to other
    rooms are stored; once the lock is released, the waiting posts are stored."""
    import psycopg

    (server,) = cluster(1)
    locked, free = unique("locked"), unique("free")
    watcher = await clients(server.ws_url(locked))
    await watcher.recv_type("joined")
    for room in (locked, free):  # both rooms exist, each with one message
        first = await clients(server.ws_url(room))
        await first.recv_type("joined")
        await first.send({"message": "first"})
        await first.messages(1)
    await watcher.messages(1)
    holder = psycopg.connect(postgres_database)  # a transaction, as in atomic()
    try:
        holder.execute("SELECT 1 FROM roomcast_room WHERE name = %s FOR UPDATE", (locked,))
        waiting = [await clients(server.ws_url(locked)) for _ in range(3)]
        for i, poster in enumerate(waiting):
            await poster.recv_type("joined")
            await poster.messages(1)  # the room's history: "first"
            await poster.send({"type": "message", "message": f"w{i}", "client_id": f"w{i}"})
            await asyncio.sleep(0.2)  # one batch each: both writer threads meet the lock
        free_posters = [await clients(server.ws_url(free)) for _ in range(2)]
        for poster in free_posters:
            await poster.recv_type("joined")

        async def post_free(n: int, poster) -> list[int]:
            seqs = []
            for i in range(5):
                await poster.send({"type": "message", "message": "x", "client_id": f"f{n}-{i}"})
                while (frame := await poster.recv(timeout=30))["type"] != "ack":
                    pass
                seqs.append(frame["seq"])
            return seqs

        done = await asyncio.gather(*(post_free(n, p) for n, p in enumerate(free_posters)))
        assert sorted(done[0] + done[1]) == list(range(2, 12))
        for poster in waiting:  # the lock is still held: nothing can have been stored
            with pytest.raises(TimeoutError):
                await poster.recv(timeout=0.2)
    finally:
        holder.rollback()
        holder.close()
    acks = []
    for poster in waiting:
        while (frame := await poster.recv(timeout=30))["type"] != "ack":
            pass
        acks.append((frame["client_id"], frame["seq"]))
    # Each stored once, seqs dense. Which sender gets which seq is not promised across
    # sockets: a post still in PostgreSQL's lock queue when the lock goes may pass one
    # set aside a moment before.
    assert sorted(seq for _, seq in acks) == [2, 3, 4]
    frames = await watcher.messages(3)
    assert [f["seq"] for f in frames] == [2, 3, 4]
    assert {f["client_id"]: f["seq"] for f in frames} == dict(acks)


async def test_a_post_to_a_room_locked_too_long_gets_busy_and_lands_when_resent(
    serve, clients, postgres_database
):
    """Past STORE_LOCKED_GIVE_UP_SECS (set through roomcast serve's environment) a post
    to a locked room fails with ``busy`` and its client_id; sent again once the lock is
    gone, it is stored once."""
    import psycopg

    server = serve(
        ROOMCAST_DATABASE_URL=postgres_database,
        ROOMCAST_STORE_LOCK_TIMEOUT_MS="200",
        ROOMCAST_STORE_LOCKED_GIVE_UP_SECS="1.5",
    )
    room = unique("held")
    poster = await clients(server.ws_url(room))
    await poster.recv_type("joined")
    await poster.send({"message": "first"})
    await poster.messages(1)
    with psycopg.connect(postgres_database) as holder:
        holder.execute("SELECT 1 FROM roomcast_room WHERE name = %s FOR UPDATE", (room,))
        await poster.send({"type": "message", "message": "late", "client_id": "late-1"})
        while (error := await poster.recv(timeout=30))["type"] == "ack":  # of "first"
            pass
        assert (error["type"], error["code"], error["client_id"]) == ("error", "busy", "late-1")
        holder.rollback()
    await poster.send({"type": "message", "message": "late", "client_id": "late-1"})
    while (frame := await poster.recv(timeout=30))["type"] != "ack":
        pass
    assert frame["seq"] == 2


async def test_posts_while_postgresql_refuses_connections_fail_and_land_when_resent(
    serve, clients, postgres_database
):
    """The database goes away (connections cut, new ones refused): posts get an
    ``internal_error`` with their client_id instead of hanging; once it is back, the
    same posts sent again are stored once each, seqs dense."""
    import psycopg

    from tests.conftest import POSTGRES_URL

    server = serve(ROOMCAST_DATABASE_URL=postgres_database)
    room = unique("outage")
    posters = [await clients(server.ws_url(room)) for _ in range(3)]
    for poster in posters:
        await poster.recv_type("joined")
    name = postgres_database.rpartition("/")[2]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )

            async def refused(n: int, poster) -> dict:
                await poster.send({"type": "message", "message": f"m{n}", "client_id": f"c{n}"})
                return await poster.recv(timeout=30)

            errors = await asyncio.gather(*(refused(n, p) for n, p in enumerate(posters)))
            assert [(e["type"], e["code"], e["client_id"]) for e in errors] == [
                ("error", "internal_error", f"c{n}") for n in range(3)
            ]
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    seqs = []
    for n, poster in enumerate(posters):
        await poster.send({"type": "message", "message": f"m{n}", "client_id": f"c{n}"})
        while (frame := await poster.recv(timeout=30))["type"] != "ack":
            pass
        seqs.append(frame["seq"])
    assert sorted(seqs) == [1, 2, 3]


async def test_writer_threads_connect_at_start_up(serve, postgres_database):
    """roomcast serve's writer threads open their PostgreSQL connections when it starts,
    not on the first post (which would wait for them: tens of milliseconds)."""
    import psycopg

    name = postgres_database.rpartition("/")[2]
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'roomcast-writer'"
    )
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        before = conn.execute(query, (name,)).fetchone()
        serve(ROOMCAST_DATABASE_URL=postgres_database)  # no socket, no post
        for _ in range(100):
            now = conn.execute(query, (name,)).fetchone()
            if now is not None and before is not None and now[0] - before[0] >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"writer connections: {before} before, {now} after start")


async def test_redis_restart_loses_nothing(cluster, clients, redis_server):
    """Messages posted while Redis is down are stored, acked, and reach all once it returns."""
    a, b = cluster(2)
    room = unique("outage")
    sender = await clients(a.ws_url(room))
    watcher = await clients(b.ws_url(room))
    for ws in (sender, watcher):
        await ws.recv_type("joined")
    await sender.send({"message": "before"})
    assert (await watcher.messages(1))[0]["seq"] == 1
    redis_server.stop()
    try:
        for i in range(3):
            await sender.send({"type": "message", "message": f"during {i}", "client_id": f"d{i}"})
        acks = []
        while len(acks) < 3:
            frame = await sender.recv(timeout=20)
            if frame["type"] == "ack" and frame["client_id"] is not None:
                acks.append(frame["seq"])
        assert acks == [2, 3, 4]  # stored in PostgreSQL even though Redis is down
        # Joining a room this process has not subscribed to needs Redis: the client is
        # told to come back (1011) rather than left on a socket that never hears a thing.
        newcomer = await clients(b.ws_url(unique("new room")))
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await newcomer.recv(timeout=20)
        assert info.value.rcvd.code == 1011
    finally:
        redis_server.start()
    frames = await watcher.messages(3, timeout=30)  # within two position checks (5 s)
    assert [(f["seq"], f["message"]) for f in frames] == [
        (2, "during 0"),
        (3, "during 1"),
        (4, "during 2"),
    ]
    await sender.send({"message": "after"})
    assert (await watcher.messages(1, timeout=20))[0]["seq"] == 5
    # Seqs 2-4 may have needed the hub's position check (published before B resubscribed),
    # but seq 5 must have come live: B's subscription works again after the restart.
    assert "seqs 5..5 never arrived" not in b.log()


async def test_oversized_and_bad_url_get_named_close_codes(serve, clients):
    """On a real server: an oversized frame closes 1009, a bad since= closes 4400."""
    server = serve()
    ws = await clients(server.ws_url("lobby"))
    await ws.recv_type("joined")
    await ws.send(json.dumps({"message": "x" * 20000}))
    with pytest.raises(Exception) as info:
        await ws.recv()
    assert info.value.rcvd.code == 1009
    bad = await clients(server.ws_url("lobby") + "?since=-4")
    with pytest.raises(Exception) as info:
        await bad.recv()
    assert info.value.rcvd.code == 4400 and "since" in info.value.rcvd.reason


async def test_embedded_default_push_and_cross_origin(serve, clients):
    """The embedded default (SQLite, in-memory layer): CLI push over HTTP, Origin checked."""
    server = serve()
    room = "café lobby"
    member = await clients(server.ws_url(room))
    await member.recv_type("joined")
    result = await asyncio.to_thread(
        server.cli, "push", room, "hello from the shell", "--server", server.http_url
    )
    assert result.returncode == 0, result.stderr
    assert (await member.messages(1))[0]["message"] == "hello from the shell"
    wrong = await asyncio.to_thread(
        server.cli, "push", room, "x", "--server", server.http_url, "--api-key", "w" * 20
    )
    assert wrong.returncode != 0 and "401" in wrong.stderr and "--api-key" in wrong.stderr
    elsewhere = await asyncio.to_thread(
        server.cli,
        *("push", room, "x", "--server", server.http_url),
        env={"ROOMCAST_DATA_DIR": str(server.data_dir / "nowhere")},
    )
    assert elsewhere.returncode != 0 and "no API key" in elsewhere.stderr, elsewhere.stderr
    assert not (server.data_dir / "nowhere").exists()  # nothing generated on the way
    with pytest.raises(Exception) as info:
        await clients(server.ws_url(room), additional_headers={"Origin": "https://evil.example"})
    assert "403" in str(info.value)
    ok = await clients(server.ws_url(room), additional_headers={"Origin": server.http_url})
    await ok.recv_type("joined")
