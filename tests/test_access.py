"""The access policy, connection tokens and the rooms API, on the test database."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Permission, User
from django.core import signing

from roomcast import access, auth, rooms
from roomcast.models import Room
from roomcast.signals import access_changed

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people():
    alice = User.objects.create_user("alice", password="pw-alice-1")
    bob = User.objects.create_user("bob")
    staff = User.objects.create_user("sam", is_staff=True)
    poster = User.objects.create_user("pat")
    poster.user_permissions.add(Permission.objects.get(codename="post_in_read_only"))
    return {"alice": alice, "bob": bob, "staff": staff, "poster": poster}


def who(user) -> access.Identity:
    return access.identity_for(User.objects.get(pk=user.pk))


def test_public_rooms_and_rooms_not_made_yet_are_open(people, settings):
    """Everyone joins and reads a public room; guests post while ALLOW_ANONYMOUS."""
    rooms.create_room("plaza")
    guest = access.anonymous()
    for room in ("plaza", "not made yet"):
        assert all(access.check(guest, room, action) for action in ("join", "read", "post"))
        assert not access.check(guest, room, "moderate")
    settings.ROOMCAST = {"ALLOW_ANONYMOUS": False}
    assert not access.check(guest, "plaza", "post")
    assert access.check(who(people["bob"]), "plaza", "post")


def test_private_rooms_are_for_members_and_staff(people):
    rooms.create_room("board", visibility="private")
    rooms.add_members("board", ["alice"])
    rooms.add_members("board", [people["bob"].pk], role="admin")
    for action in ("join", "read", "post"):
        assert access.check(who(people["alice"]), "board", action)
        assert access.check(who(people["staff"]), "board", action)
        assert not access.check(who(people["poster"]), "board", action)
        assert not access.check(access.anonymous(), "board", action)
    assert access.check(who(people["bob"]), "board", "moderate")
    assert not access.check(who(people["alice"]), "board", "moderate")


def test_read_only_rooms_post_for_staff_admins_and_the_permission(people):
    rooms.create_room("news", visibility="read-only")
    rooms.add_members("news", ["bob"], role="admin")
    for name in ("alice", "bob", "staff", "poster"):
        assert access.check(who(people[name]), "news", "read")
    assert access.check(access.anonymous(), "news", "join")
    assert not access.check(access.anonymous(), "news", "post")
    assert not access.check(who(people["alice"]), "news", "post")
    assert access.check(who(people["bob"]), "news", "post")
    assert access.check(who(people["staff"]), "news", "post")
    assert access.check(who(people["poster"]), "news", "post")


def deny_bob(user, room, action):
    return getattr(user, "username", "") != "bob"


def test_a_project_policy_replaces_the_builtin_one(people, settings):
    settings.ROOMCAST = {"ACCESS_POLICY": "tests.test_access.deny_bob"}
    rooms.create_room("board", visibility="private")
    assert access.check(who(people["alice"]), "board", "join")  # the project's rule
    assert not access.check(who(people["bob"]), "plaza", "read")
    with pytest.raises(ValueError, match="Unknown action"):
        access.check(who(people["bob"]), "plaza", "shout")  # type: ignore[arg-type]


def allow_all(user, room, action):
    return True


def test_guests_get_distinct_names():
    names = {access.anonymous().name for _ in range(50)}
    assert len(names) == 50
    assert all(name.startswith("guest-") for name in names)


def test_tokens_name_their_user_and_expire(people):
    token = auth.issue_token(people["alice"], ttl=60)
    user, expires = auth.verify_token(token)
    assert user == people["alice"]
    assert time.time() + 55 < expires <= time.time() + 60
    expired = auth.issue_token(people["alice"], ttl=0.001)
    time.sleep(1.1)
    with pytest.raises(auth.TokenExpiredError):
        auth.verify_token(expired)


def test_forged_and_stale_tokens_are_refused(people):
    token = auth.issue_token(people["alice"], ttl=60)
    with pytest.raises(auth.InvalidTokenError):
        auth.verify_token(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    # Signed with the project's key, but not as a token: a different salt.
    other = signing.dumps({"u": people["alice"].pk, "e": time.time() + 60, "h": "x"})
    with pytest.raises(auth.InvalidTokenError):
        auth.verify_token(other)
    with pytest.raises(auth.InvalidTokenError):
        auth.verify_token("x" * 5000)
    people["alice"].set_password("a new one")
    people["alice"].save()
    with pytest.raises(auth.InvalidTokenError):  # a password change ends old tokens
        auth.verify_token(token)


def test_an_inactive_user_gets_no_token_and_old_ones_stop(people):
    token = auth.issue_token(people["bob"], ttl=60)
    people["bob"].is_active = False
    people["bob"].save()
    with pytest.raises(auth.InactiveUserError):
        auth.verify_token(token)
    with pytest.raises(ValueError, match="inactive"):
        auth.issue_token(people["bob"])


def test_rooms_api_says_what_is_wrong(people):
    rooms.create_room("dup")
    with pytest.raises(rooms.RoomExistsError):
        rooms.create_room("dup")
    with pytest.raises(rooms.RoomNotFoundError):
        rooms.set_visibility("nowhere", "private")
    with pytest.raises(ValueError, match="public, private, read_only"):
        rooms.set_visibility("dup", "secret")
    with pytest.raises(rooms.UserNotFoundError):
        rooms.add_members("dup", ["nobody"])
    info = rooms.room_info("dup")
    assert (info.visibility, info.members, info.message_count) == ("public", [], 0)


def test_changes_that_take_rights_away_send_access_changed(people):
    sent: list[dict] = []

    def receiver(sender, **kwargs):
        sent.append({"room": kwargs.get("room"), "user_id": kwargs.get("user_id")})

    access_changed.connect(receiver)
    try:
        rooms.create_room("club")
        rooms.add_members("club", ["alice", "bob"])
        assert sent == []  # adding takes nothing away
        rooms.set_visibility("club", "private")
        rooms.remove_members("club", ["bob", "pat"])  # pat was never a member
        assert sent == [
            {"room": "club", "user_id": None},
            {"room": "club", "user_id": people["bob"].pk},
        ]
        assert Room.objects.get(name="club").visibility == "private"
        rooms.create_room("vault", visibility="private")  # sockets may be in it already
        assert sent[-1] == {"room": "vault", "user_id": None}
        assert rooms.room_info("club").members == [("alice", "member")]
    finally:
        access_changed.disconnect(receiver)


def test_public_rooms_are_remembered_and_forgotten_when_they_change(people):
    """A room read as public answers later joins without the database; a visibility
    change forgets it at once, and a read under way during a change remembers nothing."""
    guest, alice = access.anonymous(), who(people["alice"])
    rooms.create_room("plaza")
    assert access.known_rights(guest, "plaza") is None  # never read yet
    assert access.check(guest, "plaza", "join")
    assert access.known_rights(guest, "plaza") == {"join", "read", "post"}
    assert access.known_rights(alice, "plaza") is None  # her bans were never read yet
    assert access.check(alice, "plaza", "join")  # reads the set of banned users
    assert access.known_rights(alice, "plaza") == {"join", "read", "post"}
    rooms.set_visibility("plaza", "private")  # access_changed: forgotten here
    assert access.known_rights(guest, "plaza") is None
    assert not access.check(guest, "plaza", "join")
    assert access.known_rights(guest, "plaza") is None  # private rooms are never remembered
    # A read that began before a change does not remember what it read.
    epoch = access._epoch
    access.forget_visibility("elsewhere")
    access._remember("plaza", "public", epoch)
    assert access.known_rights(guest, "plaza") is None


def test_a_project_policy_is_always_asked(people, settings):
    rooms.create_room("plaza")
    access.check(access.anonymous(), "plaza", "join")
    settings.ROOMCAST = {"ACCESS_POLICY": "tests.test_access.deny_bob"}
    assert access.known_rights(access.anonymous(), "plaza") is None


# -- bans (roomcast.moderation) --------------------------------------------------------------


def test_a_room_ban_shuts_the_user_out_of_that_room_only_staff_included(people):
    """A ban comes before the policy: the banned user may do nothing in the room, even
    as staff; other rooms and other users go on."""
    from roomcast import moderation

    rooms.create_room("plaza")
    moderation.ban(people["staff"], room="plaza", duration=3600)
    moderation.ban("alice", room="plaza", duration=3600)
    for action in access.ACTIONS:
        assert not access.check(who(people["staff"]), "plaza", action)
        assert not access.check(who(people["alice"]), "plaza", action)
    assert access.check(who(people["staff"]), "elsewhere", "moderate")
    assert access.check(who(people["alice"]), "elsewhere", "post")
    assert access.check(who(people["bob"]), "plaza", "post")
    assert access.known_rights(who(people["alice"]), "plaza") is None  # asks the database
    assert moderation.banned("alice", "plaza") is not None
    assert moderation.banned("alice") is None  # not from the site


def test_a_site_ban_shuts_the_user_out_everywhere_even_under_a_project_policy(people, settings):
    from roomcast import moderation

    moderation.ban("bob", reason="spam")
    settings.ROOMCAST = {"ACCESS_POLICY": "tests.test_access.allow_all"}
    assert access.check(who(people["alice"]), "a", "moderate")  # the project's rule
    assert not access.check(who(people["bob"]), "a", "join")  # the ban before it
    settings.ROOMCAST = {}
    for room in ("plaza", "board"):
        assert not access.check(who(people["bob"]), room, "join")
    ban = moderation.banned("bob", "plaza")
    assert ban is not None and ban.room is None and ban.until is None and ban.reason == "spam"


def test_a_ban_ends_by_itself_when_its_time_passes(people):
    """No job lifts it: the end time is compared when deciding. The end is moved into
    the past with update(), which sends no signal: the decision alone sees it."""
    from django.utils import timezone

    from roomcast import moderation
    from roomcast.models import Ban

    moderation.ban("alice", room="plaza", duration=3600)
    moderation.ban("alice", duration=60)
    assert not access.check(who(people["alice"]), "plaza", "join")
    Ban.objects.filter(room__isnull=True).update(until=timezone.now())
    assert not access.check(who(people["alice"]), "plaza", "join")  # the room ban holds
    assert access.check(who(people["alice"]), "lobby", "join")
    Ban.objects.update(until=timezone.now())
    assert access.check(who(people["alice"]), "plaza", "join")


def test_unban_ends_bans_now_and_keeps_them_as_records(people):
    from roomcast import moderation
    from roomcast.models import Ban

    moderation.ban("alice", room="plaza")
    moderation.ban("alice", room="board", duration=60)
    moderation.ban("bob")
    assert moderation.unban("alice", room="plaza") == 1
    assert access.check(who(people["alice"]), "plaza", "join")
    assert not access.check(who(people["alice"]), "board", "join")
    assert moderation.unban("alice") == 1
    assert moderation.unban("alice") == 0
    assert access.check(who(people["alice"]), "board", "join")
    assert not access.check(who(people["bob"]), "board", "join")
    assert Ban.objects.count() == 3


def test_ban_arguments_are_checked(people):
    import datetime

    from django.utils import timezone

    from roomcast import moderation
    from roomcast.protocol import InvalidRoomNameError

    with pytest.raises(rooms.UserNotFoundError):
        moderation.ban("nobody")
    with pytest.raises(ValueError, match="not both"):
        moderation.ban("alice", until=timezone.now(), duration=60)
    with pytest.raises(ValueError, match="future"):
        moderation.ban("alice", until=timezone.now() - datetime.timedelta(seconds=1))
    with pytest.raises(ValueError, match="future"):
        moderation.ban("alice", duration=-5)
    with pytest.raises(ValueError, match="200"):
        moderation.ban("alice", reason="x" * 201)
    with pytest.raises(InvalidRoomNameError):
        moderation.ban("alice", room=f"user/{people['alice'].pk}")  # a user's own channel
    ban = moderation.ban("alice", room="new room", duration=datetime.timedelta(minutes=5))
    assert Room.objects.get(name="new room").visibility == "public"  # made for it
    assert ban.until is not None and ban.until > timezone.now()


def test_banned_users_get_no_connection_token_at_connect(people):
    """The token still verifies as a token; security refuses the banned user (tested
    on sockets in test_admin): here the lookup it uses."""
    from roomcast import moderation, revocation

    moderation.ban("alice", duration=90)
    ban = access.banned(people["alice"].pk)
    assert ban is not None
    reason = revocation.ban_reason(ban)
    assert reason.startswith("banned from this site until ") and reason.endswith("Z")
    assert len(reason.encode()) <= 123
    assert access.banned(people["bob"].pk) is None


def test_the_ban_free_set_is_forgotten_when_a_ban_is_saved(people):
    """A process remembers who has no ban; saving a ban forgets it at once, so a public
    room's join (known_rights) cannot let the user in from memory."""
    from roomcast import moderation

    rooms.create_room("plaza")
    alice = who(people["alice"])
    assert access.check(alice, "plaza", "join")  # reads the set of banned users
    assert access.ban_free(people["alice"].pk)
    assert access.known_rights(alice, "plaza") is not None
    moderation.ban("alice", room="plaza", duration=60)
    assert not access.ban_free(people["alice"].pk)
    assert access.known_rights(alice, "plaza") is None
    assert not access.check(alice, "plaza", "join")
    assert access.ban_free(people["bob"].pk)  # read again: bob has none


def test_past_the_bound_the_banned_set_is_not_kept_and_decisions_stay_right(people, monkeypatch):
    """More banned users than BAN_CACHE_USERS: nobody is known ban-free from memory,
    and every decision reads the database (correct, slower). A user with several bans
    counts once."""
    from roomcast import moderation

    monkeypatch.setattr(access, "BAN_CACHE_USERS", 1)
    moderation.ban("alice", room="plaza")
    moderation.ban("alice", room="board")
    assert access.check(who(people["bob"]), "plaza", "join")
    assert access.ban_free(people["bob"].pk)  # one banned user: the set is kept
    moderation.ban("bob", room="board")
    assert access.check(who(people["poster"]), "plaza", "join")
    assert not access.ban_free(people["poster"].pk)  # two: not kept
    assert access.check(who(people["bob"]), "plaza", "join")
    assert not access.check(who(people["bob"]), "board", "join")
    assert not access.check(who(people["alice"]), "plaza", "join")
