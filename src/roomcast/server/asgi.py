"""ASGI entry point of the standalone site (``roomcast serve``)."""

from __future__ import annotations

import os

from channels.routing import ProtocolTypeRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "roomcast.server.settings")
# Set Django up before importing anything that touches models.
django_asgi_app = get_asgi_application()

from roomcast.lifespan import Lifespan  # noqa: E402
from roomcast.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The bundled site serves its own static files (the JS client, admin CSS) so that
        # one command runs it; a project behind a CDN or WhiteNoise does not need this.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": websocket_application(),
        "lifespan": Lifespan(),
    }
)
