"""Signals roomcast sends, and projects may send too.

``access_changed`` says "rights in this room (or of this user) may have been taken
away": roomcast sends it when a room's visibility changes or a member is removed
(``roomcast.rooms``), when a user is deactivated, deleted or logs out; the receiver in
``roomcast.revocation`` re-checks the affected live sockets on every process and closes
those no longer allowed. A project with its own ``ACCESS_POLICY`` sends it when its own
rules change::

    from roomcast.signals import access_changed
    access_changed.send(sender=None, room="lobby")          # every socket of a room
    access_changed.send(sender=None, user_id=42)            # every socket of a user
    access_changed.send(sender=None, room="lobby", user_id=42)

Send it after the change is committed (``transaction.on_commit``): the re-check reads
the database.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Keyword arguments: ``room`` (str or None), ``user_id`` (int or None); at least one.
access_changed = Signal()
