"""URLs of the standalone site, its favicon, and its answer to a host it does not serve."""

from __future__ import annotations

import base64

from django.contrib import admin
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views import defaults
from django.views.decorators.http import require_safe
from django.views.generic import RedirectView

#: A 32x32 PNG (a blue disc and ring, 204 bytes). Browsers ask every site for
#: /favicon.ico; without an answer each page view adds a 404 to the log.
FAVICON_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAYAAABzenr0AAAAk0lEQVR42u2X0Q3AIAhEXaibdeeO0i7QxDsO4WpK4p94"
    "T0GFMb5kx3ndyGgRXQKjiksQWeIhiGxxCmK2yMwkCEWYAZHF1XmvEMiiaKwRHwggIo76UruPZj18CpEdIPGGT4GlZzI/"
    "HYC9fj/AfgDlSdh2DUsfovan2PYzKv2O2wsSi5LMoii1KMstGhOL1syiOV1tD844K+UScbE5AAAAAElFTkSuQmCC"
)
#: How long browsers may keep the favicon, in seconds (a day).
FAVICON_MAX_AGE_SECS = 24 * 60 * 60


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """The site's icon, for the ``/favicon.ico`` every browser asks for."""
    response = HttpResponse(FAVICON_PNG, content_type="image/png")
    response["Cache-Control"] = f"public, max-age={FAVICON_MAX_AGE_SECS}"
    return response


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400 page: for a host name the site does not answer to, say so (the log names the
    variable that allows it); anything else gets Django's page. The host is not echoed:
    it is the client's text."""
    if isinstance(exception, DisallowedHost):
        return HttpResponse(
            "Bad Request (400): this server does not answer to the host name in this "
            "request. Its log names the variable that allows it.\n",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    return defaults.bad_request(request, exception)


handler400 = "roomcast.server.urls.bad_request"

urlpatterns = [
    # The web app's rooms (roomcast.app_views); the tutorial's pages stay at /chat/.
    path("", RedirectView.as_view(pattern_name="roomcast:rooms", permanent=False)),
    path("favicon.ico", favicon),
    path("admin/", admin.site.urls),
    path("", include("roomcast.urls")),
]
