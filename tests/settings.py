"""Django settings for the test suite: in-memory layer, SQLite unless told otherwise."""

from __future__ import annotations

import os
import tempfile

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
INSTALLED_APPS = [
    "django.contrib.admin",  # roomcast.admin, tested in tests/test_admin.py
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "roomcast",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"  # roomcast.urls included as a project does: names under roomcast:
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
# A file, opened as `roomcast serve` opens one (WAL, BEGIN IMMEDIATE, a busy timeout), not
# Django's default shared-cache in-memory database: there, a reader beside the store's
# writer thread fails at once with "database table is locked" (SQLITE_LOCKED is not
# retried by the busy timeout), which a server on a file never sees. One file per run.
_sqlite = os.environ.get("ROOMCAST_TEST_SQLITE") or os.path.join(
    tempfile.gettempdir(), f"roomcast-tests-{os.getpid()}.sqlite3"
)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _sqlite,
        "TEST": {"NAME": _sqlite},
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
}
# roomcast serve's embedded layer (Channels' own, with its expiry sweep bounded).
CHANNEL_LAYERS = {"default": {"BACKEND": "roomcast.layers.InMemoryChannelLayer"}}
ROOMCAST = {"API_KEYS": ["test-api-key-0123456789"]}
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
