"""URLs of a project that includes roomcast at the root, as the README does (the pages
reverse ``roomcast:`` names, which tests.settings' bare ``roomcast.urls`` lacks)."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("", include("roomcast.urls"))]
