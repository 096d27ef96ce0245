"""A Django project that adds roomcast to its own apps: the README's "use it in your
project" path, kept working by tests/e2e/test_example.py.

Run it (Redis needed: pushes from ``manage.py shell`` reach the server through it)::

    cd example && REDIS_URL=redis://127.0.0.1:6379/0 ../.venv/bin/python manage.py migrate
    REDIS_URL=... ../.venv/bin/uvicorn mysite.asgi:application --port 8001
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "roomcast",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "mysite.urls"
ASGI_APPLICATION = "mysite.asgi.application"
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
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SQLITE_PATH", BASE_DIR / "db.sqlite3"),
    }
}
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# roomcast: the channel layer links the server processes and any code that pushes.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                    "protocol": 2,
                    "socket_timeout": 15,
                    "max_connections": 1000,
                }
            ],
            "prefix": os.environ.get("REDIS_PREFIX", "mysite"),
        },
    }
}
ROOMCAST = {
    "HISTORY_COUNT": 20,
    # Anyone who can open a room page may post in it; False: only logged-in users post.
    "ALLOW_ANONYMOUS": True,
    # The HTTP push API stays off (403) until ROOMCAST_API_KEY holds a key of 16+ characters.
    "API_KEYS": [os.environ["ROOMCAST_API_KEY"]] if os.environ.get("ROOMCAST_API_KEY") else [],
}
