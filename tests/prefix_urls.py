"""URLs of a project that includes roomcast under a prefix, ``/rt/`` (not at the root):
the pages must not assume ``/chat/`` (tests/e2e/test_browser.py, tests/test_pages.py)."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("rt/", include("roomcast.urls"))]
