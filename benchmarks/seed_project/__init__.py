"""The seed tutorial's chat project, moved to Channels 4: the benchmarks' ``seed`` baseline.

Only what the tutorial builds for its chat room, as it writes it: the sync
``ChatConsumer`` with ``async_to_sync``, ``AuthMiddlewareStack``, channels_redis
``RedisChannelLayer``, served by daphne. See ``benchmarks/README.md``.
"""
