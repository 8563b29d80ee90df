"""moto's real server, with SQS FIFO receive selection serialised: the FIFO tests' endpoint.

Why: SQS never hands out a message of a FIFO message group while an earlier message of that
group is in flight; the group is locked until those messages are deleted or their visibility
timeout ends ("FIFO queue delivery logic", "Interleaving multiple ordered message groups",
https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/FIFO-queues-understanding-logic.html
and .../interleaving-multiple-ordered-message-groups.html). moto 5.2.5 (the newest release)
breaks that rule in two ways, both in `SQSBackend.receive_message`:

1. It copies the set of in-flight groups once, before its loop (the whole long poll), with no
   lock, and its server is threaded: two concurrent ReceiveMessage calls can both see group b
   free; the first takes b-0, the second skips the now invisible b-0 and takes b-1. A long poll
   that began before b-0 went out keeps seeing b free for its whole wait. esm runs several
   receivers per FIFO queue, as Lambda does, so its FIFO tests measured this race, not esm.
2. A message whose visibility timeout ended stays in moto's in-flight set until the loop reaches
   it, so a group whose first two messages came back is still "locked" by the second when the
   loop looks at the first: moto redelivers a-3 before a-2.

This launcher runs moto's own server (`moto.server.main`, the same app and arguments as
`python -m moto.server`) with `receive_message` wrapped so that:
- the selection runs under one lock as a single pass with no wait (moto's own code, wait 0),
  after releasing messages whose visibility ended from the in-flight set;
- the long poll is a loop around it that waits *outside* the lock (a condition woken by sends,
  deletes and visibility changes, and re-evaluated every RECHECK_SECONDS for visibility
  timeouts that end by themselves), so WaitTimeSeconds still works and a long poll never holds
  up a delete.
Deletes and visibility changes take the same lock (they mutate the in-flight set the selection
iterates over). Nothing else of moto changes; the esm code and its client are untouched.

Usage: python tests/fifo_moto_server.py -H 127.0.0.1 -p PORT   (moto.server's arguments)
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import moto.server
from moto.sqs.models import Message, Queue, SQSBackend

RECHECK_SECONDS = 0.1  # how soon a message whose visibility timeout ended is seen by a long poll

_changed = threading.Condition(threading.RLock())  # RLock: moto's add_message may receive
_original_receive = SQSBackend.receive_message
_original_delete = SQSBackend.delete_message
_original_visibility = SQSBackend.change_message_visibility
_original_add = Queue.add_message


def _release_expired(queue: Queue) -> None:
    """Drop messages whose visibility timeout ended from the in-flight set (moto bug 2)."""
    for message in [m for m in queue.pending_messages if m.visible]:
        queue.pending_messages.discard(message)


def receive_message(
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> list[Message]:
    """One locked selection pass at a time; the long poll waits outside the lock (moto bug 1)."""
    deadline = time.monotonic() + wait_seconds_timeout
    with _changed:
        while True:
            _release_expired(self.get_queue(queue_name))
            got = _original_receive(
                self, queue_name, count, 0, visibility_timeout, message_attribute_names
            )
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            _changed.wait(min(remaining, RECHECK_SECONDS))  # releases the lock while waiting


def delete_message(self: SQSBackend, queue_name: str, receipt_handle: str) -> None:
    with _changed:
        _original_delete(self, queue_name, receipt_handle)
        _changed.notify_all()


def change_message_visibility(
    self: SQSBackend, queue_name: str, receipt_handle: str, visibility_timeout: int
) -> None:
    with _changed:
        _original_visibility(self, queue_name, receipt_handle, visibility_timeout)
        _changed.notify_all()


def add_message(self: Queue, message: Message) -> None:
    _original_add(self, message)
    with _changed:
        _changed.notify_all()


def install() -> None:
    patched: dict[Any, dict[str, Any]] = {
        SQSBackend: {
            "receive_message": receive_message,
            "delete_message": delete_message,
            "change_message_visibility": change_message_visibility,
        },
        Queue: {"add_message": add_message},
    }
    for cls, methods in patched.items():
        for name, function in methods.items():
            setattr(cls, name, function)


if __name__ == "__main__":
    install()
    moto.server.main(sys.argv[1:])
