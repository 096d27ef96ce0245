"""``roomcast serve``'s settings with roomcast's URLs under ``/rt/`` (tests/prefix_urls.py),
for a uvicorn process in tests/e2e/test_browser.py."""

from __future__ import annotations

from roomcast.server.settings import *  # noqa: F403

ROOT_URLCONF = "tests.prefix_urls"
