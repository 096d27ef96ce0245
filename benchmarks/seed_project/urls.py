"""No HTTP views: the benchmark only opens WebSockets."""

from __future__ import annotations

urlpatterns: list[object] = []
