"""The stored stream's batches and writer threads, on the test database (SQLite).

PostgreSQL's batch path (one pipelined ``executemany``) runs in
``e2e/test_multiprocess.py::test_concurrent_posters_share_rooms_on_postgres``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from django.db import IntegrityError

from roomcast import stream
from roomcast.exceptions import StoreBusyError
from roomcast.models import Message
from roomcast.routing import websocket_application
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


def post(room: str, text: str, *, client_id: str = "", user_id: int | None = None):
    p = stream.new_post(room, text, client_id=client_id)
    p.user_id = user_id
    return p


def stored_texts(room: str) -> list[tuple[int, str]]:
    return list(Message.objects.filter(room__name=room).order_by("seq").values_list("seq", "text"))


def test_a_batch_keeps_each_rooms_order_with_new_rooms_and_a_resend():
    """New rooms (no row for the batch statement) and a resent client_id are stored
    alone after the batch; every room's seqs stay dense and in the order given."""
    first = stream.store_batch([post("zeta", "z0"), post("alpha", "a0", client_id="c1")])
    assert [(r.room, r.seq) for r in first] == [("zeta", 1), ("alpha", 1)]  # type: ignore[union-attr]
    posts = [
        post("zeta", "z1"),
        post("beta", "b1"),  # a new room, between two of an old one
        post("alpha", "a1"),
        post("alpha", "a0 again", client_id="c1"),  # resent: the stored one comes back
        post("beta", "b2"),
        post("zeta", "z2"),
    ]
    results = stream.store_batch(posts)
    assert [(r.room, r.seq, r.duplicate) for r in results] == [  # type: ignore[union-attr]
        ("zeta", 2, False),
        ("beta", 1, False),
        ("alpha", 2, False),
        ("alpha", 1, True),
        ("beta", 2, False),
        ("zeta", 3, False),
    ]
    assert stored_texts("zeta") == [(1, "z0"), (2, "z1"), (3, "z2")]
    assert stored_texts("beta") == [(1, "b1"), (2, "b2")]
    assert stored_texts("alpha") == [(1, "a0"), (2, "a1")]
    assert '"message":"a0"' in results[3].frame  # type: ignore[union-attr]


def test_a_failing_post_fails_alone():
    """A post the database refuses (here a user that does not exist, caught at commit)
    fails the batch's transaction; every post is then stored alone and only it fails."""
    stream.store_batch([post("fk", "seed")])
    results = stream.store_batch(
        [post("fk", "one"), post("fk", "bad", user_id=987654), post("fk", "two")]
    )
    assert isinstance(results[1], IntegrityError)
    assert [r.seq for r in (results[0], results[2])] == [2, 3]  # type: ignore[union-attr]
    assert stored_texts("fk") == [(1, "seed"), (2, "one"), (3, "two")]


def test_a_post_that_fails_outside_the_database_fails_alone():
    """Not only database errors: text that cannot be encoded (a lone surrogate, which
    the protocol and the push API refuse before it gets here) fails only its post."""
    results = stream.store_batch(
        [post("enc", "one"), post("enc", "bad \ud800"), post("enc", "two")]
    )
    assert isinstance(results[1], UnicodeEncodeError)
    assert stored_texts("enc") == [(1, "one"), (2, "two")]


async def test_the_writer_stores_concurrent_posts_in_batches():
    """200 posts at once from async code: stored in fewer batches than posts, every
    room's seqs dense, each poster's messages in the order it sent them."""
    writer = stream.StreamWriter()
    rooms = [f"busy {i}" for i in range(5)]

    async def poster(n: int) -> list[int]:
        return [(await writer.store(post(rooms[n % 5], f"p{n} m{i}"))).seq for i in range(4)]

    seqs = await asyncio.gather(*(poster(n) for n in range(50)))
    assert all(s == sorted(s) for s in seqs)
    for room in rooms:
        got = await asyncio.to_thread(stored_texts, room)
        assert [seq for seq, _ in got] == list(range(1, 41))
    assert writer.posts == 200
    assert writer.batches < 200


async def test_a_full_queue_refuses_the_post_with_busy(settings):
    """Over STORE_QUEUE_LIMIT waiting posts, a post is refused at once: the socket's client
    gets a ``busy`` error for it and stays connected; nothing is stored."""
    base = settings.ROOMCAST
    settings.ROOMCAST = {**base, "STORE_QUEUE_LIMIT": 0}  # every queue is full
    with pytest.raises(StoreBusyError):
        await stream.writer.store(post("full", "refused"))
    client = RoomCommunicator(websocket_application(), "full")
    await client.join()
    await client.say("refused", client_id="x1")
    error = await client.receive_event("error")
    assert (error["code"], error.get("client_id")) == ("busy", "x1")
    settings.ROOMCAST = {**base, "STORE_QUEUE_LIMIT": 10}
    await client.say("sent again", client_id="x1")
    frames = {f["type"]: f for f in [await client.receive_event() for _ in range(2)]}
    assert frames["ack"] == {"type": "ack", "client_id": "x1", "seq": 1}
    assert (frames["message"]["seq"], frames["message"]["message"]) == (1, "sent again")
    await client.disconnect()


async def test_posts_to_a_room_set_aside_wait_together_and_are_stored_in_order():
    """A room found locked keeps its posts aside; a new post to it joins them, a post to
    another room is stored at once; when the room is due, its posts are stored in the
    order they came and the room is forgotten."""
    writer = stream.StreamWriter(threads=1)
    loop = asyncio.get_running_loop()
    earlier: asyncio.Future = loop.create_future()
    entry = stream._LockedRoom()
    entry.add([(post("aside", "first"), (loop, earlier))], time.monotonic())
    entry.due = time.monotonic() + 0.5
    writer._locked["aside"] = entry
    later = asyncio.create_task(writer.store(post("aside", "second")))
    other = await asyncio.wait_for(writer.store(post("elsewhere", "now")), 5)
    assert other.seq == 1 and not earlier.done() and not later.done()
    assert [p.text for p, _ in writer._locked["aside"].posts] == ["first", "second"]
    first, second = await asyncio.wait_for(asyncio.gather(earlier, later), 5)
    assert (first.seq, second.seq) == (1, 2)
    assert await asyncio.to_thread(stored_texts, "aside") == [(1, "first"), (2, "second")]
    assert writer._locked == {}


def test_the_client_id_lookups_use_the_rooms_client_id_index():
    """A post's duplicate check finds a client_id through the (room, client_id) unique
    index, not by reading the room's messages one by one: SQLite uses a partial index
    only for a WHERE that contains the index's condition as written (the check once
    said ``<> ''`` and cost a post time growing with its room)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from roomcast import edits

    index = "roomcast_message_room_client_id"
    stream.store_batch([post("plans", "one", client_id="c1")])
    with CaptureQueriesContext(connection) as captured:
        assert stream._stored_with_client_id(post("plans", "x", client_id="c1"), "default")
        assert edits._stored_with_client_id("plans", "c1", "default") is not None
    lookups = [q["sql"] for q in captured.captured_queries if "client_id\" = '" in q["sql"]]
    assert len(lookups) == 2, captured.captured_queries
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + stream._take_seq_sql(connection), ["plans", "c1"])
        assert index in str(cursor.fetchall())
        for sql in lookups:
            cursor.execute("EXPLAIN QUERY PLAN " + sql)
            assert index in str(cursor.fetchall()), sql
