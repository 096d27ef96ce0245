"""ASGI entry point: Django for HTTP, roomcast's rooms for WebSockets."""

import os

from channels.routing import ProtocolTypeRouter
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django_asgi_app = get_asgi_application()

from roomcast.lifespan import Lifespan  # noqa: E402  (after Django is set up)
from roomcast.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        # In development, serve static files (roomcast.js for the /chat/ pages) here too;
        # in production, collectstatic and your web server or WhiteNoise do it.
        "http": ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app,
        "websocket": websocket_application(),
        # Starts roomcast's hub with the server and stops it cleanly.
        "lifespan": Lifespan(),
    }
)
