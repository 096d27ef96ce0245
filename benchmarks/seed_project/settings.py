"""Settings of the seed project. Environment-driven, for the benchmark only.

``SEED_REDIS_PORT``: the benchmark's private Redis on 127.0.0.1 (required).
``SEED_DATA_DIR``: where the SQLite database of sessions and users lives (required; the
benchmark runs ``migrate`` there before it starts daphne).
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "seed-benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "channels",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "benchmarks.seed_project.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(os.environ["SEED_DATA_DIR"]) / "seed.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# As the seed writes it: the core layer, hosts as (host, port) tuples, no other options.
ASGI_APPLICATION = "benchmarks.seed_project.asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [("127.0.0.1", int(os.environ["SEED_REDIS_PORT"]))]},
    }
}
