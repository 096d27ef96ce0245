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
