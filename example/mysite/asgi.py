"""ASGI entry point: Django for HTTP, roomcast's rooms for WebSockets."""

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django_asgi_app = get_asgi_application()

from roomcast.routing import websocket_application  # noqa: E402  (after Django is set up)

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application()})
