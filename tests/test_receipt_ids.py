"""Receipt ids: 32 hex digits, unique across threads, forks and an application's random.seed."""

from __future__ import annotations

import os
import random
import re
import sys
import threading

import pytest

from streamguard._receipts.ids import new_id


def test_ids_are_32_lowercase_hex_digits_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_an_application_seeding_random_does_not_repeat_receipt_ids() -> None:
    random.seed(1234)
    first = new_id()
    random.seed(1234)
    assert new_id() != first


def test_ids_drawn_from_16_threads_at_once_are_all_distinct() -> None:
    out: list[list[str]] = [[] for _ in range(16)]

    def draw(into: list[str]) -> None:
        into.extend(new_id() for _ in range(2_000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for into in out for i in into]
    assert len(set(every)) == len(every) == 32_000


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork is POSIX")
def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent, then out without cleanup
        try:
            os.write(write, " ".join(new_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parent = {new_id() for _ in range(100)}
    with os.fdopen(read, "rb") as f:
        child = set(f.read().decode().split())
    os.waitpid(pid, 0)
    assert len(child) == 100
    assert not parent & child
