"""Revocation in one process: each trigger closes (or narrows) exactly the sockets it should.

Members join the real hub of the test's event loop through ``services.join_room`` on the
in-memory layer; changes are made the way a project makes them (``roomcast.rooms``, saving
or deleting a user, ``django.contrib.auth.logout``), in a worker thread as a view would,
and the control message goes through the layer's control group to the hub.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import logout
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.db import transaction
from django.test import Client, RequestFactory

from roomcast import access, fanout, revocation, rooms, services
from roomcast.hub import Member
from roomcast.protocol import CloseCode
from roomcast.signals import access_changed

pytestmark = pytest.mark.django_db(transaction=True)

FORBIDDEN = int(CloseCode.FORBIDDEN)


class Socket:
    """An ASGI send that records what the server sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def close(self) -> tuple[int, str] | None:
        for message in self.sent:
            if message["type"] == "websocket.close":
                return message["code"], message["reason"]
        return None

    async def closed(self, timeout: float = 5.0) -> tuple[int, str]:
        """The close code and reason, once the server has sent them."""
        for _ in range(int(timeout * 100)):
            if self.close is not None:
                return self.close
            await asyncio.sleep(0.01)
        raise AssertionError(f"not closed within {timeout} s; sent {self.sent!r}")


@pytest.fixture
async def hub():
    """This loop's hub, in the control group (as the server's is once started)."""
    the_hub = services.hub()
    await asyncio.wait_for(the_hub.control_joined.wait(), 5)
    yield the_hub
    await the_hub.close()


async def join(room: str, identity: access.Identity) -> tuple[Socket, Member]:
    socket = Socket()
    member = await services.join_room(room, send=socket, since=None, v1=True, identity=identity)
    return socket, member


def sync(func):
    """Run ``func`` in a worker thread, as a view or a management command runs it."""
    return database_sync_to_async(func)


async def user(name: str, **fields) -> User:
    return await sync(User.objects.create_user)(name, **fields)


async def settle(hub) -> None:
    """Wait until no re-check is queued or running in ``hub``."""
    queue = revocation._rechecks.get(hub)
    for _ in range(500):
        if queue is None or queue.task is None or queue.task.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("re-checks still running after 5 s")


async def test_removing_a_member_closes_their_sockets_in_that_room_only(hub):
    """rooms.remove_members closes the removed user's sockets in the private room with
    4403 and the reason; their socket elsewhere and other members' sockets stay."""
    alice, bob = await user("alice"), await user("bob")
    await sync(rooms.create_room)("board", visibility="private")
    await sync(rooms.add_members)("board", ["alice", "bob"])
    a_board, _ = await join("board", access.identity_for(alice))
    a_lobby, _ = await join("lobby", access.identity_for(alice))
    b_board, _ = await join("board", access.identity_for(bob))
    await sync(rooms.remove_members)("board", ["alice"])
    assert await a_board.closed() == (FORBIDDEN, "not allowed in this room any more")
    await settle(hub)
    assert a_lobby.close is None and b_board.close is None
    assert [m.identity.name for m in hub.members("board") if not m.closed] == ["bob"]


async def test_making_a_room_private_closes_non_members_and_keeps_members_and_staff(hub):
    """set_visibility(private) closes guests and users who are not members; members and
    staff keep their sockets, with their rights re-read."""
    member, stranger = await user("mia"), await user("stan")
    staff = await user("sally", is_staff=True)
    await sync(rooms.create_room)("plaza")
    await sync(rooms.add_members)("plaza", ["mia"])
    sockets = {
        "mia": await join("plaza", access.identity_for(member)),
        "stan": await join("plaza", access.identity_for(stranger)),
        "sally": await join("plaza", access.identity_for(staff)),
        "guest 1": await join("plaza", access.anonymous()),
        "guest 2": await join("plaza", access.anonymous()),
    }
    await sync(rooms.set_visibility)("plaza", "private")
    for name in ("stan", "guest 1", "guest 2"):
        assert await sockets[name][0].closed() == (FORBIDDEN, "not allowed in this room any more")
    await settle(hub)
    for name in ("mia", "sally"):
        socket, kept = sockets[name]
        assert socket.close is None
        assert kept.rights == {"join", "read", "post"}


async def test_losing_post_only_keeps_the_socket_and_updates_its_rights(hub):
    """A public room made read-only: members keep their sockets, but their cached post
    right becomes False (their next post is refused, not their connection)."""
    reader = await user("rita")
    await sync(rooms.create_room)("news")
    socket, member = await join("news", access.identity_for(reader))
    member.rights = frozenset({"join", "read", "post"})
    await sync(rooms.set_visibility)("news", "read_only")
    for _ in range(500):
        if "post" not in member.rights:
            break
        await asyncio.sleep(0.01)
    assert member.rights == {"join", "read"}
    assert socket.close is None and not member.closed


async def test_demoting_a_room_admin_takes_their_post_right_in_a_read_only_room(hub):
    """add_members(role=member) of a room admin re-checks that user in that room."""
    boss = await user("boris")
    await sync(rooms.create_room)("announcements", visibility="read_only")
    await sync(rooms.add_members)("announcements", ["boris"], role="admin")
    socket, member = await join("announcements", access.identity_for(boss))
    member.rights = access.rights_from(
        await access.acheck_many(member.identity, "announcements", ("join", "post"))
    )
    assert "post" in member.rights
    await sync(rooms.add_members)("announcements", ["boris"], role="member")
    for _ in range(500):
        if "post" not in member.rights:
            break
        await asyncio.sleep(0.01)
    assert "post" not in member.rights and socket.close is None


async def test_deactivating_a_user_closes_all_their_sockets(hub):
    """is_active=False saved on a user closes their sockets in every room, public ones
    too; other users' sockets stay."""
    carol, dave = await user("carol"), await user("dave")
    c1, _ = await join("lobby", access.identity_for(carol))
    c2, _ = await join("café", access.identity_for(carol))
    d1, _ = await join("lobby", access.identity_for(dave))

    def deactivate():
        found = User.objects.get(pk=carol.pk)
        found.is_active = False
        found.save()

    await sync(deactivate)()
    assert await c1.closed() == (FORBIDDEN, "account deactivated")
    assert await c2.closed() == (FORBIDDEN, "account deactivated")
    assert d1.close is None


async def test_changing_a_password_closes_the_users_sockets(hub):
    """A new password ends the tokens issued before (auth) and closes the user's live
    sockets; other users' stay."""
    erin, dave = await user("erin"), await user("dave")
    e1, _ = await join("lobby", access.identity_for(erin))
    d1, _ = await join("lobby", access.identity_for(dave))

    def change_password():
        found = User.objects.get(pk=erin.pk)
        found.set_password("a new one, long enough")
        found.save()

    await sync(change_password)()
    assert await e1.closed() == (FORBIDDEN, "password changed")
    assert d1.close is None


async def test_saving_a_user_without_taking_rights_away_closes_nothing(hub):
    """A save that changes nothing that matters (last_login, a name) publishes nothing."""
    erin = await user("erin")
    socket, _ = await join("lobby", access.identity_for(erin))
    epoch = hub.access_epoch

    def touch():
        found = User.objects.get(pk=erin.pk)
        found.first_name = "Erin"
        found.save()
        found.save(update_fields=["last_login"])

    await sync(touch)()
    await asyncio.sleep(0.2)
    assert hub.access_epoch == epoch and socket.close is None


async def test_deleting_a_user_closes_their_sockets(hub):
    """Deleting the user (post_delete) closes their sockets with 4403 'account deleted'."""
    fay = await user("fay")
    socket, _ = await join("lobby", access.identity_for(fay))
    await sync(User.objects.filter(pk=fay.pk).delete)()
    assert await socket.closed() == (FORBIDDEN, "account deleted")


async def test_demoting_staff_closes_their_sockets_in_private_rooms_they_are_not_in(hub):
    """A staff user made non-staff loses the rooms only staff gave them, at once: the
    re-check reads the user again instead of trusting the identity made at connect."""
    gus = await user("gus", is_staff=True)
    await sync(rooms.create_room)("vault", visibility="private")
    vault, _ = await join("vault", access.identity_for(gus))
    lobby, _ = await join("lobby", access.identity_for(gus))

    def demote():
        found = User.objects.get(pk=gus.pk)
        found.is_staff = False
        found.save()

    await sync(demote)()
    assert await vault.closed() == (FORBIDDEN, "not allowed in this room any more")
    await settle(hub)
    assert lobby.close is None


async def test_logging_out_closes_the_sockets_of_that_session_only(hub):
    """user_logged_out (django.contrib.auth.logout) closes the sockets that came with that
    session with 'logged out'; the same user's socket of another session, or a token,
    stays."""
    hal = await user("hal")

    def login() -> str:
        client = Client()
        client.force_login(User.objects.get(pk=hal.pk))
        return client.session.session_key

    key_1, key_2 = await sync(login)(), await sync(login)()
    with_1, _ = await join("lobby", access.identity_for(hal, session_key=key_1))
    also_1, _ = await join("café", access.identity_for(hal, session_key=key_1))
    with_2, _ = await join("lobby", access.identity_for(hal, session_key=key_2))
    by_token, _ = await join("lobby", access.identity_for(hal, via="token"))

    def log_out() -> None:
        request = RequestFactory().get("/")
        request.session = SessionStore(key_1)
        request.user = User.objects.get(pk=hal.pk)
        logout(request)

    await sync(log_out)()
    assert await with_1.closed() == (FORBIDDEN, "logged out")
    assert await also_1.closed() == (FORBIDDEN, "logged out")
    await asyncio.sleep(0.1)
    assert with_2.close is None and by_token.close is None


async def test_a_logout_publishes_a_hash_of_the_session_key_not_the_key(hub):
    """The session key is a login: what crosses the layer is a digest of it."""
    seen: list[dict] = []
    channel = await fanout.get_layer().new_channel("test.")
    await fanout.get_layer().group_add("roomcast.control", channel)
    ivy = await user("ivy")

    def log_out() -> str:
        client = Client()
        client.force_login(User.objects.get(pk=ivy.pk))
        key = client.session.session_key
        request = RequestFactory().get("/")
        request.session = SessionStore(key)
        request.user = User.objects.get(pk=ivy.pk)
        logout(request)
        return key

    key = await sync(log_out)()
    seen.append(await asyncio.wait_for(fanout.get_layer().receive(channel), 5))
    assert seen[0]["type"] == "access.revoke" and seen[0]["user_id"] == ivy.pk
    assert key not in json.dumps(seen) and seen[0]["session"] == revocation.session_digest(key)


async def test_a_change_rolled_back_publishes_nothing(hub):
    """Inside a transaction that rolls back, removing a member closes nothing."""
    jo = await user("jo")
    await sync(rooms.create_room)("attic", visibility="private")
    await sync(rooms.add_members)("attic", ["jo"])
    socket, _ = await join("attic", access.identity_for(jo))
    epoch = hub.access_epoch

    def remove_then_roll_back():
        with transaction.atomic():
            rooms.remove_members("attic", ["jo"])
            transaction.set_rollback(True)

    await sync(remove_then_roll_back)()
    await asyncio.sleep(0.2)
    assert hub.access_epoch == epoch and socket.close is None


async def test_a_projects_own_access_changed_rechecks_with_its_policy(hub, settings):
    """A project with its own ACCESS_POLICY sends access_changed(user_id=...) when its
    rules change; the user's sockets are re-asked with that policy."""
    settings.ROOMCAST = {**settings.ROOMCAST, "ACCESS_POLICY": "tests.test_revocation.policy"}
    kim = await user("kim")
    _BANNED.clear()
    socket, _ = await join("lobby", access.identity_for(kim))
    other, _ = await join("lobby", access.anonymous())
    _BANNED.add("kim")
    await sync(access_changed.send)(sender=None, user_id=kim.pk)
    assert await socket.closed() == (FORBIDDEN, "not allowed in this room any more")
    await settle(hub)
    assert other.close is None


_BANNED: set[str] = set()
_CALLS: list[tuple[str, str, str]] = []


def policy(user, room: str, action: str) -> bool:
    """A project's policy for these tests: everyone may do everything but the banned."""
    _CALLS.append((user.get_username(), room, action))
    return user.get_username() not in _BANNED


async def test_a_room_recheck_asks_the_policy_once_per_user_in_one_thread_hop(hub, settings):
    """A room re-check of 30 sockets (20 guests, 2 users with 5 sockets each) asks the
    policy once per distinct user and once for all guests, each action, in one hop."""
    settings.ROOMCAST = {**settings.ROOMCAST, "ACCESS_POLICY": "tests.test_revocation.policy"}
    lee, max_ = await user("lee"), await user("max")
    for _ in range(20):
        await join("hall", access.anonymous())
    for person in (lee, max_):
        for _ in range(5):
            await join("hall", access.identity_for(person))
    hops: list[int] = []
    check_rights = revocation.check_rights

    def counted(room, identities):
        hops.append(len(identities))
        return check_rights(room, identities)

    _CALLS.clear()
    revocation.check_rights = counted  # type: ignore[assignment]
    try:
        await sync(access_changed.send)(sender=None, room="hall")
        for _ in range(500):
            if hops:
                break
            await asyncio.sleep(0.01)
        await settle(hub)
    finally:
        revocation.check_rights = check_rights  # type: ignore[assignment]
    assert hops == [30]
    assert sorted({name for name, _, _ in _CALLS}) == ["", "lee", "max"]
    assert len(_CALLS) == 3 * len(revocation.RECHECK_ACTIONS)


async def test_a_member_checked_before_a_revocation_but_registered_after_is_rechecked(hub):
    """The join race: rights checked, then a revocation arrives, then the member
    registers. Its older rights_epoch makes the hub re-check it as it joins."""
    lou = await user("lou")
    await sync(rooms.create_room)("den", visibility="private")
    await sync(rooms.add_members)("den", ["lou"])
    identity = access.identity_for(lou)
    epoch = hub.access_epoch  # read before the check, as a join path does
    assert await access.acheck(identity, "den", "join")
    await sync(rooms.remove_members)("den", ["lou"])  # nobody in "den" yet: nothing to close
    for _ in range(500):
        if hub.access_epoch > epoch:
            break
        await asyncio.sleep(0.01)
    socket = Socket()
    member = Member(socket, room="den", max_frames=100, v1=True, user_id=lou.pk,
                    identity=identity, rights_epoch=epoch)  # fmt: skip
    await hub.join(member, _empty_catch_up)
    assert await socket.closed() == (FORBIDDEN, "not allowed in this room any more")


async def _empty_catch_up():
    from roomcast.hub import CatchUp

    return CatchUp(preface=[], frames=[], last_seq=0)


async def test_rechecks_for_rooms_and_users_with_no_sockets_here_cost_nothing(hub):
    """A re-check of a room or a user this process has no socket of queues no work."""
    hub.control({"type": "access.recheck", "room": "nobody here", "user_id": None})
    hub.control({"type": "access.recheck", "room": None, "user_id": 123456})
    queue = revocation._rechecks.get(hub)
    assert queue is None or (not queue.rooms and not queue.users and queue.task is None)


async def test_unknown_or_malformed_control_messages_are_logged_not_raised(hub, caplog):
    """The control group is an internal contract; a bad message is logged and ignored."""
    hub.control({"type": "access.nonsense"})
    hub.control({"type": "access.revoke"})  # no user_id
    assert "unknown type" in caplog.text and "failed" in caplog.text


# -- bans (roomcast.moderation) --------------------------------------------------------------


async def test_a_room_ban_closes_the_users_sockets_of_that_room_only(hub):
    """moderation.ban(room=...) closes the user's sockets in that room with 4403 and the
    ban's reason; their socket elsewhere and another user's socket in the room stay."""
    from roomcast import moderation

    mo, ned = await user("mo"), await user("ned")
    m_lobby, _ = await join("lobby", access.identity_for(mo))
    m_cafe, _ = await join("café", access.identity_for(mo))
    n_lobby, _ = await join("lobby", access.identity_for(ned))
    await sync(moderation.ban)("mo", room="lobby")
    assert await m_lobby.closed() == (FORBIDDEN, "banned from this room")
    await asyncio.sleep(0.2)  # the revoke has come (m_lobby closed): nothing else follows
    assert m_cafe.close is None and n_lobby.close is None


async def test_a_ban_in_a_transaction_rolled_back_closes_nothing(hub):
    from roomcast import moderation

    pia = await user("pia")
    socket, _ = await join("lobby", access.identity_for(pia))
    epoch = hub.access_epoch

    def ban_then_roll_back():
        with transaction.atomic():
            moderation.ban("pia", duration=60)
            transaction.set_rollback(True)

    await sync(ban_then_roll_back)()
    await asyncio.sleep(0.2)
    assert hub.access_epoch == epoch and socket.close is None


def test_a_bans_reason_names_its_end_rounded_up_to_the_minute():
    """Never earlier than the real end; UTC; within a close reason's 123 bytes."""
    import datetime

    from roomcast.models import Ban

    at = datetime.datetime(2026, 11, 30, 3, 14, 5, tzinfo=datetime.UTC)
    assert revocation.ban_reason(Ban(until=at)) == "banned from this site until 2026-11-30T03:15Z"
    exact = at.replace(second=0).astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert revocation.ban_reason(Ban(until=exact, room_id=1)) == (
        "banned from this room until 2026-11-30T03:14Z"
    )
    assert revocation.ban_reason(Ban()) == "banned from this site"
