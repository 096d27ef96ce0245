"""The project's own URLs, plus roomcast's pages and HTTP push API."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("roomcast.urls")),
]
