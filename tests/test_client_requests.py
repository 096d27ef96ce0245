"""roomcast.client's matching of requests with their answers (``_requests``), alone."""

from __future__ import annotations

from typing import Any

from roomcast.client._requests import SILENT_RUN_MAX, Requests


def requests() -> tuple[Requests, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    waiting = Requests(sent.append)
    waiting.open = True
    return waiting, sent


def test_a_ping_separates_silent_frames_from_the_next_request() -> None:
    """typing then history: a ping goes between, and its pong clears the typing."""
    waiting, sent = requests()
    waiting.send("silent", "a", {"type": "typing", "room": "a"})
    waiting.send("history", "b", {"type": "history", "room": "b"})
    assert [f["type"] for f in sent] == ["typing", "ping", "history"]
    waiting.pong()
    request = waiting.refused("b")
    assert request is not None and request.kind == "history"


def test_an_error_answers_the_oldest_request_of_its_room_only() -> None:
    """A bare error answers the head if it is about the error's room, else nothing."""
    waiting, _ = requests()
    waiting.send("silent", "a", {"type": "typing", "room": "a"})
    assert waiting.refused("b") is None
    request = waiting.refused("a")
    assert request is not None and request.kind == "silent"


def test_an_answer_skips_silent_frames_before_it_but_not_other_requests() -> None:
    """A history page answers the first history request of its room, past silent frames
    and pings; a presence frame with an unanswered history before it answers nothing."""
    waiting, _ = requests()
    waiting.send("silent", "a", {"type": "read", "room": "a", "seq": 1})
    waiting.send("history", "a", {"type": "history", "room": "a"})
    waiting.send("presence", "a", {"type": "presence", "room": "a"})
    assert waiting.answered("presence", "a") is None
    history = waiting.answered("history", "a")
    assert history is not None and history.kind == "history"
    presence = waiting.answered("presence", "a")
    assert presence is not None and presence.kind == "presence"


def test_a_long_run_of_silent_frames_gets_a_ping_and_nothing_waits_without_a_socket() -> None:
    """A program that only types still gets its entries cleared by a pong; with no
    socket open nothing is sent or remembered."""
    waiting, sent = requests()
    for _ in range(SILENT_RUN_MAX):
        waiting.send("silent", "a", {"type": "typing", "room": "a"})
    assert sent[-1] == {"type": "ping"}
    waiting.pong()
    assert waiting.refused("a") is None
    waiting.socket_lost()
    waiting.send("history", "a", {"type": "history", "room": "a"})
    assert len(sent) == SILENT_RUN_MAX + 1
