"""roomcast.layers.InMemoryChannelLayer: Channels' in-memory layer with a bounded sweep."""

from __future__ import annotations

import asyncio

import pytest
from channels import layers as channels_layers

from roomcast import layers


async def test_it_delivers_as_channels_layer_does():
    layer = layers.InMemoryChannelLayer()
    await layer.group_add("room", "specific.a")
    await layer.group_add("room", "specific.b")
    await layer.group_send("room", {"type": "m", "n": 1})
    assert await layer.receive("specific.a") == {"type": "m", "n": 1}
    assert await layer.receive("specific.b") == {"type": "m", "n": 1}
    await layer.group_discard("room", "specific.b")
    await layer.group_send("room", {"type": "m", "n": 2})
    assert await layer.receive("specific.a") == {"type": "m", "n": 2}
    assert "specific.b" not in layer.channels


async def test_the_sweep_runs_at_most_once_per_interval(monkeypatch):
    """A thousand group sends within the interval sweep the layer once, not a thousand
    times; the first call after it sweeps again."""
    sweeps = 0
    sweep = channels_layers.InMemoryChannelLayer._clean_expired

    def counted(self: channels_layers.InMemoryChannelLayer) -> None:
        nonlocal sweeps
        sweeps += 1
        sweep(self)

    monkeypatch.setattr(channels_layers.InMemoryChannelLayer, "_clean_expired", counted)
    clock = [1000.0]
    monkeypatch.setattr(layers.time, "monotonic", lambda: clock[0])
    layer = layers.InMemoryChannelLayer(capacity=2000)
    for i in range(1000):
        await layer.group_add(f"group{i}", f"specific.c{i}")
    for _ in range(1000):
        await layer.group_send("group0", {"type": "m"})
    assert sweeps == 1
    clock[0] += layers.SWEEP_INTERVAL_SECS * 0.99
    await layer.group_send("group0", {"type": "m"})
    assert sweeps == 1
    clock[0] += layers.SWEEP_INTERVAL_SECS * 0.02
    await layer.group_send("group0", {"type": "m"})
    assert sweeps == 2


async def test_expired_messages_and_their_channels_still_go(monkeypatch):
    """An expired message is dropped, and its channel taken out of its groups, at the
    first sweep after its expiry."""
    monkeypatch.setattr(layers, "SWEEP_INTERVAL_SECS", 0.05)
    layer = layers.InMemoryChannelLayer(expiry=0.01)
    await layer.group_add("room", "specific.gone")
    await layer.group_send("room", {"type": "m"})  # nobody reads specific.gone
    await asyncio.sleep(0.1)
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.05):
            await layer.receive("specific.other")  # a receive sweeps first
    assert "specific.gone" not in layer.channels
    assert "specific.gone" not in layer.groups.get("room", {})
