"""Object ids: shape, uniqueness, and no shared randomness across a fork."""

from __future__ import annotations

import os
import re

from respond.ids import new_id


def test_ids_have_the_prefix_and_48_hex_digits() -> None:
    assert re.fullmatch(r"resp_[0-9a-f]{48}", new_id("response"))
    assert re.fullmatch(r"msg_[0-9a-f]{48}", new_id("message"))
    assert re.fullmatch(r"file-[0-9a-f]{48}", new_id("file"))
    assert re.fullmatch(r"item_[0-9a-f]{48}", new_id("no such kind"))


def test_ids_do_not_repeat_across_many_pool_refills() -> None:
    ids = [new_id("message") for _ in range(20_000)]  # about 120 pools of random bytes
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    new_id("message")  # the parent has a pool with bytes left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.close(read)
        os.write(write, " ".join(new_id("message") for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_id("message") for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)
