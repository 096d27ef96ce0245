"""Channel layers of roomcast's own: Channels' in-memory layer, with its sweep bounded.

Layer: fan-out (delivery). Imports Channels only.

``channels.layers.InMemoryChannelLayer`` sweeps every channel's queue and every group's
members for expired entries at the start of each ``receive`` and ``group_send``
(``_clean_expired``): O(channels + group memberships) per call. The hub keeps one
channel and one group per room with members, a user's own stream included, so a process
with a thousand connected users paid a sweep of a thousand groups for each layer
message and each room a socket opened: 7% of ``roomcast serve``'s time with 1,000
users in a room and 50 joins a second (py-spy, benchmarks/churn.py). Channels treats
this layer as one for tests (django/channels#1574); roomcast's embedded default runs on
it, so it gets this subclass, which sweeps at most once per
:data:`SWEEP_INTERVAL_SECS`. An expired message or group membership goes up to that
much later than its expiry (60 s and a day by default), which nothing relies on.
"""

from __future__ import annotations

import time
from typing import Any

from channels.layers import InMemoryChannelLayer as _ChannelsInMemoryChannelLayer

__all__ = ["SWEEP_INTERVAL_SECS", "InMemoryChannelLayer"]

#: Longest time between two sweeps for expired messages and group memberships.
SWEEP_INTERVAL_SECS = 1.0


class InMemoryChannelLayer(_ChannelsInMemoryChannelLayer):
    """``channels.layers.InMemoryChannelLayer``, sweeping for expired entries at most
    once per :data:`SWEEP_INTERVAL_SECS` instead of on every receive and group send.

    Use it as Channels' one: ``{"BACKEND": "roomcast.layers.InMemoryChannelLayer",
    "CONFIG": {"capacity": 1000}}``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL_SECS
        super()._clean_expired()  # type: ignore[misc]  # private, not in the stubs
