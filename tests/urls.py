"""URLs of a project that includes roomcast at the root, as the README does (the pages
reverse ``roomcast:`` names, which tests.settings' bare ``roomcast.urls`` lacks), and
the Django admin (tests/test_admin.py)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [path("admin/", admin.site.urls), path("", include("roomcast.urls"))]
