"""Group naming, settings, and the system checks that stop a bad configuration."""

from __future__ import annotations

import re

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from roomcast.conf import roomcast_settings, settings_from_environ, unknown_environ
from roomcast.fanout import room_group

GROUP_NAME = re.compile(r"^[a-zA-Z\d\-_.]+$")


@pytest.mark.parametrize(
    "room",
    ["lobby", "技术交流", "café", "a room", "é" * 200, "x" * 90, "x" * 91, ".hidden", "a.b", "-"],
)
def test_room_group_is_always_a_valid_channels_group(room):
    """Every room maps to a name Channels accepts: ASCII, allowed characters, under 100."""
    group = room_group(room)
    assert GROUP_NAME.match(group) and len(group) < 100


def test_room_group_keeps_the_seed_name_for_plain_rooms():
    """Plain names map to the seed's "chat_<room>", so seed-style group_send reaches them."""
    assert room_group("lobby") == "chat_lobby"
    assert room_group("a.b") == "chat_a.b"


def test_room_group_never_collides():
    """Distinct rooms get distinct groups, hashed or plain."""
    rooms = ["café", "cafe", "技术交流", "技术", ".x", "x", "x" * 91, "x" * 92]
    groups = [room_group(r) for r in rooms]
    assert len(set(groups)) == len(rooms)
    assert room_group("café") == room_group("café")


def test_unknown_setting_is_reported_with_a_hint():
    """A misspelt ROOMCAST key fails with the closest known name."""
    with override_settings(ROOMCAST={"HISTORY_CUONT": 5}):
        with pytest.raises(ImproperlyConfigured, match="Did you mean 'HISTORY_COUNT'"):
            _ = roomcast_settings.HISTORY_COUNT
        assert [e.id for e in run_checks() if e.id.startswith("roomcast")] == ["roomcast.E001"]


@pytest.mark.parametrize(
    ("setting", "check_id"),
    [
        ({"MAX_FRAME_BYTES": 0}, "roomcast.E002"),
        ({"HISTORY_COUNT": "50"}, "roomcast.E002"),
        ({"REPLAY_LIMIT": 5000}, "roomcast.E003"),
        ({"ALLOW_ANONYMOUS": "yes"}, "roomcast.E004"),
        ({"ALLOWED_ORIGINS": "https://x.example"}, "roomcast.E005"),
        ({"API_KEYS": ["short"]}, "roomcast.E006"),
        ({"PUBLISH_TIMEOUT_SECS": 0}, "roomcast.E007"),
        ({"CHANNEL_LAYER": "missing"}, "roomcast.E008"),
        ({"STORE_QUEUE_LIMIT": 0}, "roomcast.E002"),
        ({"STORE_LOCK_TIMEOUT_MS": 1.5}, "roomcast.E002"),
        ({"STORE_LOCKED_GIVE_UP_SECS": -1}, "roomcast.E010"),
    ],
)
def test_bad_settings_fail_the_system_checks(setting, check_id):
    """Each bad setting is an error that says what to fix."""
    with override_settings(ROOMCAST=setting):
        errors = [e for e in run_checks() if e.id.startswith("roomcast")]
    assert [e.id for e in errors] == [check_id]
    assert errors[0].msg


def test_default_settings_pass_the_checks():
    """The defaults are valid."""
    assert [e for e in run_checks() if e.id.startswith("roomcast")] == []


def test_settings_from_the_environment_are_parsed_by_type():
    """roomcast serve's ROOMCAST_<KEY> variables: typed, unknown ones ignored."""
    environ = {
        "ROOMCAST_HISTORY_COUNT": " 20 ",
        "ROOMCAST_ALLOW_ANONYMOUS": "off",
        "ROOMCAST_ALLOWED_ORIGINS": "https://a.example, https://b.example",
        "ROOMCAST_POSITION_CHECK_SECS": "2.5",
        "ROOMCAST_CHANNEL_LAYER": "chat",
        "ROOMCAST_API_KEYS": "not-read-here-use-ROOMCAST_API_KEY",
        "ROOMCAST_DATABASE_URL": "sqlite:///x",
    }
    assert settings_from_environ(environ) == {
        "HISTORY_COUNT": 20,
        "ALLOW_ANONYMOUS": False,
        "ALLOWED_ORIGINS": ["https://a.example", "https://b.example"],
        "POSITION_CHECK_SECS": 2.5,
        "CHANNEL_LAYER": "chat",
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ROOMCAST_HISTORY_COUNT", "many", "ROOMCAST_HISTORY_COUNT must be a whole number"),
        ("ROOMCAST_ALLOW_ANONYMOUS", "maybe", "ROOMCAST_ALLOW_ANONYMOUS must be true or false"),
        ("ROOMCAST_PUBLISH_TIMEOUT_SECS", "soon", "must be a number, not 'soon'"),
    ],
)
def test_a_bad_environment_value_names_the_variable(name, value, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        settings_from_environ({name: value})


def test_a_misspelt_environment_variable_is_reported_with_a_hint():
    environ = {"ROOMCAST_HISTOR_COUNT": "5", "ROOMCAST_DATABASE_URL": "x", "HOME": "/"}
    assert unknown_environ(environ) == [
        "ROOMCAST_HISTOR_COUNT is not a roomcast variable and is ignored. "
        "Did you mean ROOMCAST_HISTORY_COUNT?"
    ]


@pytest.mark.parametrize(
    ("key", "value", "check_id"),
    [
        ("ROOM_LINGER_SECS", -1, "roomcast.E024"),
        ("ROOM_LINGER_SECS", 86401, "roomcast.E024"),
        ("ROOM_LINGER_SECS", "30", "roomcast.E024"),
        ("ROOM_LINGER_SECS", float("nan"), "roomcast.E024"),
        ("PRESENCE_COUNT_SECS", 0, "roomcast.E020"),
    ],
)
def test_bad_linger_or_count_interval_fails_the_checks(key, value, check_id):
    with override_settings(ROOMCAST={key: value}):
        errors = [e for e in run_checks() if e.id.startswith("roomcast")]
    assert [e.id for e in errors] == [check_id] and key in errors[0].msg
