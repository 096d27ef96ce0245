"""/healthz, /readyz and /metrics (roomcast.ops_views, roomcast.metrics)."""

from __future__ import annotations

import socket

import pytest
from django.db import connections
from django.test import AsyncClient, override_settings
from prometheus_client.parser import text_string_to_metric_families

from roomcast import hub, metrics, ops_views
from roomcast.routing import websocket_application
from roomcast.testing import RoomCommunicator

from .conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return samples(response.content.decode())


def redis_layer(url: str, prefix: str = "rcops") -> dict[str, object]:
    return {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": prefix},
        }
    }


async def test_healthz_answers_ok():
    """/healthz is public and says ok."""
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_healthz_refuses_post():
    """/healthz answers GET and HEAD only."""
    assert (await AsyncClient().post("/healthz")).status_code == 405


async def test_readyz_ok_with_the_in_memory_layer():
    """The database and the in-memory layer answer: 200 with each check's result."""
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


@pytest.mark.redis
async def test_readyz_ok_through_redis_twice(redis_server, redis_prefix):
    """Through a real Redis (pub/sub layer) the round trip succeeds, probe after probe."""
    with override_settings(CHANNEL_LAYERS=redis_layer(redis_server.url, redis_prefix)):
        client = AsyncClient()
        for _ in range(3):
            response = await client.get("/readyz")
            assert response.status_code == 200, response.json()
            assert response.json()["channel_layer"] == "ok"


@pytest.mark.redis
async def test_readyz_503_when_redis_stops(redis_server, redis_prefix):
    """With the private Redis stopped, /readyz is 503 naming the layer's error; with it
    back, 200 again."""
    with override_settings(CHANNEL_LAYERS=redis_layer(redis_server.url, redis_prefix)):
        client = AsyncClient()
        assert (await client.get("/readyz")).status_code == 200
        redis_server.stop()
        try:
            response = await client.get("/readyz")
            body = response.json()
            assert response.status_code == 503
            assert body["status"] == "unavailable" and body["database"] == "ok"
            assert body["channel_layer"] != "ok" and "Traceback" not in body["channel_layer"]
        finally:
            redis_server.start()
        # Back: a new probe channel is made, and the check passes again.
        response = await client.get("/readyz")
        assert response.status_code == 200, response.json()


async def test_readyz_503_when_the_database_is_unreachable(monkeypatch):
    """A PostgreSQL URL on a closed port: 503, the database's reason, the layer ok."""
    closed = free_port()
    broken = {
        **connections.settings["default"],
        "ENGINE": "django.db.backends.postgresql",
        "OPTIONS": {},  # not the test database's SQLite options
        "NAME": "nothing",
        "USER": "nobody",
        "HOST": "127.0.0.1",
        "PORT": str(closed),
    }
    # The probe's thread makes its own connection from these (the test's is untouched).
    monkeypatch.setitem(connections.settings, "default", broken)
    response = await AsyncClient().get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable" and body["channel_layer"] == "ok"
    assert body["database"].startswith("OperationalError") and "refused" in body["database"]


async def test_readyz_times_out_on_a_database_that_does_not_answer(monkeypatch):
    """A server that accepts the connection and says nothing: 503 "timed out" after the
    check's bound; a probe while that check still hangs answers at once without
    starting another."""
    monkeypatch.setattr(ops_views, "CHECK_TIMEOUT_SECS", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; no one answers
    try:
        broken = {
            **connections.settings["default"],
            "ENGINE": "django.db.backends.postgresql",
            "OPTIONS": {},  # not the test database's SQLite options
            "NAME": "nothing",
            "HOST": "127.0.0.1",
            "PORT": str(silent.getsockname()[1]),
        }
        monkeypatch.setitem(connections.settings, "default", broken)
        client = AsyncClient()
        first = await client.get("/readyz")
        assert first.status_code == 503
        assert first.json()["database"] == "timed out after 0.3 s"
        second = await client.get("/readyz")
        assert second.status_code == 503
        assert second.json()["database"].startswith("still waiting for the previous check")
    finally:
        silent.close()  # the hung connect fails, the check's thread ends


async def test_metrics_needs_the_api_key():
    """No key: 401 with WWW-Authenticate; a wrong key: 401; the key: 200."""
    client = AsyncClient()
    missing = await client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"] == "Bearer"
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    assert (await client.get("/metrics", headers=AUTH)).status_code == 200


async def test_metrics_403_without_api_keys():
    """With no API keys configured, /metrics says how to open it."""
    with override_settings(ROOMCAST={"API_KEYS": []}):
        response = await AsyncClient().get("/metrics")
    assert response.status_code == 403
    assert "METRICS_PUBLIC" in response.json()["detail"]


async def test_metrics_public_setting():
    """METRICS_PUBLIC: /metrics answers without a key."""
    with override_settings(ROOMCAST={"API_KEYS": [], "METRICS_PUBLIC": True}):
        response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    assert b"roomcast_messages_stored_total" in response.content


async def test_metrics_501_without_prometheus_client(monkeypatch):
    """Without prometheus-client the page says what to install."""
    monkeypatch.setattr(metrics, "prometheus_client", None)
    response = await AsyncClient().get("/metrics", headers=AUTH)
    assert response.status_code == 501
    assert b"pip install 'prometheus-client>=0.20'" in response.content


def test_noop_stand_ins_accept_every_call():
    """The stand-in used without prometheus-client takes what call sites call."""
    noop = metrics._Noop()
    noop.inc()
    noop.inc(3)
    noop.dec()
    noop.set(2)
    noop.observe(0.1)
    assert noop.labels(endpoint="ws") is noop


async def test_a_post_moves_stored_and_deliveries():
    """One post in a room with two members: messages stored +1, deliveries +2, one more
    store latency observation; connections and subscriptions count the sockets."""
    client = AsyncClient()
    before = await scrape(client)
    app = websocket_application()
    alice = RoomCommunicator(app, "metered")
    bob = RoomCommunicator(app, "metered")
    try:
        await alice.join()
        await bob.join()
        during = await scrape(client)
        room_sockets = ("roomcast_connections", (("endpoint", "room"),))
        assert during[room_sockets] == before.get(room_sockets, 0) + 2
        subs = ("roomcast_subscriptions", ())
        assert during[subs] == before[subs] + 2
        await alice.say("counted")
        await alice.receive_event("message")
        await bob.receive_event("message")
        after = await scrape(client)
    finally:
        await alice.disconnect()
        await bob.disconnect()
        if (running := hub.running_hub()) is not None:
            await running.close()
    stored = ("roomcast_messages_stored_total", ())
    deliveries = ("roomcast_deliveries_total", ())
    latency_count = ("roomcast_store_latency_seconds_count", ())
    assert after[stored] == before[stored] + 1
    assert after[deliveries] == before[deliveries] + 2
    assert after[latency_count] == before[latency_count] + 1
    closed = await scrape(client)
    assert closed[room_sockets] == before.get(room_sockets, 0)


async def test_rate_limited_posts_are_counted():
    """A post over the per-socket rate limit moves roomcast_rate_limited_posts."""
    client = AsyncClient()
    before = await scrape(client)
    limited = {"API_KEYS": [API_KEY], "POST_RATE_PER_SOCKET": 0.001, "POST_BURST_PER_SOCKET": 1}
    with override_settings(ROOMCAST=limited):
        alice = RoomCommunicator(websocket_application(), "limited")
        try:
            await alice.join()
            await alice.say("one")
            await alice.say("two")
            while (frame := await alice.receive_event())["type"] != "error":
                pass  # the first post's ack and message
            assert frame["code"] == "rate_limited"
            after = await scrape(client)
        finally:
            await alice.disconnect()
            if (running := hub.running_hub()) is not None:
                await running.close()
    key = ("roomcast_rate_limited_posts_total", ())
    assert after[key] == before[key] + 1
