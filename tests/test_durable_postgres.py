"""Edits, deletes, read cursors and the user channel on PostgreSQL: the raw SQL (the
seq taken under the room's row lock, the cursor's upsert, the bounded unread count)
run for real, with racing threads, in the bundled site (``roomcast manage shell``)
pointed at a database of this run.

The rest of the suite runs on SQLite; these are the statements that differ.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.test_cli import run

pytestmark = pytest.mark.postgres

SCRIPT = r"""
import json, threading
from django.contrib.auth import get_user_model
from django.db import connection
from roomcast import access, cursors, edits, push, services
from roomcast.exceptions import MessageNotFoundError, PermissionDeniedError
from roomcast.models import Message, ReadCursor

User = get_user_model()
alice = User.objects.create_user(f"alice-{TAG}")
bob = User.objects.create_user(f"bob-{TAG}")
me, you = access.identity_for(alice), access.identity_for(bob)
ROOM = f"pg {TAG}"
out = {}
for i in range(6):
    services.store_message(ROOM, f"m{i}", user=alice if i % 2 == 0 else bob)

def threads(target, args_list):
    results, errors = [], []
    def call(args):
        try:
            results.append(target(*args))
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connection.close()
    workers = [threading.Thread(target=call, args=(a,)) for a in args_list]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results, errors

# Eight edits racing, one client_id: one event; then edits of other messages racing with
# posts: the seqs stay dense.
changes, errors = threads(
    lambda: edits.edit_message(ROOM, 1, "once", by=me, client_id="race"), [()] * 8
)
out["race"] = [len({c.seq for c in changes}), sum(not c.duplicate for c in changes), errors]
_, errors = threads(
    lambda seq: edits.edit_message(ROOM, seq, f"edit of {seq}", by=None), [(s,) for s in (2, 3, 4)]
)
_, errors2 = threads(lambda n: services.store_message(ROOM, f"post {n}"), [(n,) for n in range(4)])
seqs = list(Message.objects.filter(room__name=ROOM).order_by("seq").values_list("seq", flat=True))
out["dense"] = [seqs == list(range(1, len(seqs) + 1)), len(seqs), errors + errors2]
try:
    edits.edit_message(ROOM, 2, "not mine", by=me)
except PermissionDeniedError as exc:
    out["forbidden"] = exc.code
edits.delete_message(ROOM, 1, by=me)
try:
    edits.delete_message(ROOM, 1, by=None)
except MessageNotFoundError as exc:
    out["not_found"] = exc.code
out["erased"] = Message.objects.filter(room__name=ROOM, text="once").count()
frames, _ = services.read_history(ROOM, None, 100)
out["first"] = json.loads(frames[0])

# Cursors: forward only, racing; unread counts bounded.
out["unread_before"] = cursors.read_state(you, [ROOM])[ROOM]
out["mark"] = [cursors.mark_read(you, ROOM, 5), cursors.mark_read(you, ROOM, 2)]
threads(lambda seq: cursors.mark_read(you, ROOM, seq), [(s,) for s in [9, 6, 12, 7] * 3])
out["cursor"] = ReadCursor.objects.get(user=bob).seq
cursors.UNREAD_COUNT_MAX = 2
out["capped"] = list(cursors.read_state(me, [ROOM, "nothing"]).values())

# The user channel: per-user seqs.
out["user"] = [push.send_to_user(f"alice-{TAG}", "hi").seq, push.send_to_user(alice, {"n": 1}).seq,
               push.send_to_user(bob.pk, [1]).seq]
print("RESULT " + json.dumps(out))
"""


def test_edits_cursors_and_user_channel_on_postgresql(tmp_path: Path, postgres_database: str):
    env = {"ROOMCAST_DATABASE_URL": postgres_database}
    migrated = run(tmp_path, "manage", "migrate", "-v", "0", env=env)
    assert migrated.returncode == 0, migrated.stderr
    script = tmp_path / "durable.py"
    # The database lives for the whole run: names of this test's own.
    script.write_text(f"TAG = {uuid.uuid4().hex[:8]!r}\n" + SCRIPT)
    code = f"exec(open({str(script)!r}).read())"
    result = run(tmp_path, "manage", "shell", "-v", "0", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["race"] == [1, 1, []]
    assert out["dense"] == [True, 14, []]  # 6 posts, 1 + 3 edits, 4 posts
    assert out["forbidden"] == "forbidden" and out["not_found"] == "not_found"
    assert out["erased"] == 0
    assert out["first"]["deleted"] is True and out["first"]["message"] == ""
    # bob's unread: alice's 3 and 5 (1 is deleted) and the four posts without a user.
    assert out["unread_before"] == [0, 6]
    assert out["mark"] == [[5, 4], [5, 4]]
    assert out["cursor"] == 12
    assert out["capped"] == [[0, 2], [0, 0]]
    assert out["user"] == [1, 2, 1]
