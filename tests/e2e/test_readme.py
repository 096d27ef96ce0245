"""The README's "use it in your project" blocks, run as written in a new Django project.

Each block the README marks with ``<!-- readme-test: ACTION -->`` is applied to a project
made by ``django-admin startproject mysite``: ``append FILE`` adds the block to the end of
FILE, ``replace FILE`` makes it the whole FILE, ``run`` runs its commands (``python`` is
this interpreter; ``uvicorn`` gets a free ``--port``), ``install`` is checked against
pyproject.toml's extras. Then Chromium opens the index page, picks a room and chats in
it through the Redis layer the settings name, with roomcast.js loaded by the page.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.conftest import free_port, wait_for_port
from tests.e2e.test_browser import WAIT_MS, new_page

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(
    r"<!-- readme-test: (?P<action>[^>]+?) -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```\n", re.S
)
# The README's marked blocks, in order; a mark lost in an edit fails the test.
EXPECTED = [
    "install",
    "append mysite/settings.py",
    "replace mysite/asgi.py",
    "append mysite/urls.py",
    "run",
]


def readme_blocks() -> list[tuple[str, str]]:
    """(action, code) of each marked block of README.md."""
    text = (REPO / "README.md").read_text()
    return [(m["action"], m["code"]) for m in BLOCK.finditer(text)]


def commands(code: str) -> list[list[str]]:
    """The shell lines of a block, comments dropped."""
    return [shlex.split(line, comments=True) for line in code.splitlines() if line.strip()]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def readme_project(tmp_path: Path, redis_server: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """A new project with the README's blocks applied, served as its ``run`` block says;
    yields its http URL and environment."""
    blocks = readme_blocks()
    assert [action for action, _ in blocks] == EXPECTED

    project = tmp_path / "mysite"
    project.mkdir()
    django_admin = str(Path(sys.executable).with_name("django-admin"))
    subprocess.run([django_admin, "startproject", "mysite", str(project)], check=True, timeout=60)
    # Not the suite's settings, and no API key: the settings must work without one.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SETTINGS_MODULE", "ROOMCAST_API_KEY")
    }
    env["REDIS_URL"] = redis_server.url

    server: list[str] | None = None
    for action, code in blocks:
        verb, _, target = action.partition(" ")
        if verb == "append":
            with open(project / target, "a") as f:
                f.write("\n\n" + code + "\n")
        elif verb == "replace":
            (project / target).write_text(code + "\n")
        elif verb == "run":
            for argv in commands(code):
                if argv[0] == "uvicorn":
                    server = argv
                    continue
                assert argv[0] == "python", argv
                done = subprocess.run(
                    [sys.executable, *argv[1:]],
                    cwd=project,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout}\n{done.stderr}"
        elif verb != "install":
            raise AssertionError(f"unknown readme-test action {action!r}")
    assert server is not None, "the run block starts no uvicorn"

    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *server[1:], "--port", str(port)],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}", env
    finally:
        stop(proc)
        print(log_path.read_text(errors="replace")[-8000:])


def test_readme_install_names_extras_that_exist() -> None:
    """The install line's roomcast extras (and the one its comment names) are in pyproject."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    install = dict(readme_blocks())["install"]
    named = re.findall(r"roomcast\[([\w,]+)\]", install) + re.findall(r"# \[(\w+)\]", install)
    assert named and all(e in extras for group in named for e in group.split(",")), named


async def test_readme_project_chats_in_chromium(
    browser: Browser,
    readme_project: tuple[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    """In the README's project: the index page leads to a room, roomcast.js loads, the
    page connects, and a message typed in one browser reaches another."""
    base, env = readme_project
    errors: list[str] = []
    alice = await new_page(browser, errors)
    scripts: list[tuple[str, int]] = []
    alice.on(
        "response", lambda r: scripts.append((r.url, r.status)) if r.url.endswith(".js") else None
    )
    await alice.goto(base + "/chat/")
    await alice.locator("#room-name-input").fill("lobby")
    await alice.locator("#room-name-submit").click()
    await alice.wait_for_url(base + "/chat/lobby/", timeout=WAIT_MS)
    await expect(alice.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    assert scripts == [(base + "/static/roomcast/roomcast.js", 200)]

    bob = await new_page(browser, errors)
    await bob.goto(base + "/chat/lobby/")
    await expect(bob.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    await alice.locator("#chat-message-input").fill("hello from the README 你好")
    await alice.locator("#chat-message-input").press("Enter")
    for page in (alice, bob):
        line = page.locator('#chat-log li[data-seq="1"]')
        await expect(line).to_contain_text("hello from the README 你好", timeout=WAIT_MS)
    await alice.screenshot(path=tmp_path / "readme-room.png", full_page=True)
    assert errors == []

    # Without ROOMCAST_API_KEY the push API is off, and says so.
    request = urllib.request.Request(
        base + "/api/rooms/lobby/messages", data=b'{"message": "x"}', method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    assert refused.value.code == 403
    assert b"api_disabled" in refused.value.read()
    # With it, the same settings turn the API on with that key.
    shell = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            "from roomcast.conf import roomcast_settings; print(roomcast_settings.API_KEYS)",
        ],
        cwd=tmp_path / "mysite",
        env={**env, "ROOMCAST_API_KEY": "k" * 20},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == repr(["k" * 20])
