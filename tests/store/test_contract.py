"""The ``Store`` contract for responses and items, on every adapter (SQLite and PostgreSQL):
what a user of the API would notice if it broke."""

from __future__ import annotations

import orjson
import pytest
from storekit import NOW, TTL, Backend, ids, message, response, save_turn

from respond.errors import ServerError
from respond.store import Store, StoredResponse
from respond.store.pages import page

# -- round trip ------------------------------------------------------------------------------


async def test_round_trip_keeps_json_exactly(store: Store) -> None:
    user = {
        "id": "msg_in", "type": "message", "role": "user", "status": "completed",
        "content": [
            {"type": "input_text", "text": "Qu'est-ce que c'est ? 日本語 🦙 \u2028 \"quoted\"\n"},
            {"type": "input_text", "text": "a NUL \u0000 and a lone \\ backslash"},
            {"type": "input_image", "detail": "auto", "file_id": None,
             "image_url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"},
            {"type": "input_file", "filename": "résumé.pdf", "file_id": None,
             "file_data": "data:application/pdf;base64,JVBERi0xLjQK"},
        ],
    }
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "think…"}],
                 "encrypted_content": None}
    call = {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f",
            "arguments": "{\"x\": 1.5e-7, \"y\": [true, null]}", "status": "completed"}
    stored = StoredResponse(
        id="resp_1",
        body={"id": "resp_1", "object": "response", "temperature": 0.7, "top_p": 1.0,
              "metadata": {"clé": "välue"}, "usage": {"input_tokens": 12, "total_tokens": 2**40},
              "output": [reasoning, call], "instructions": None, "tools": []},
        context_ids=["msg_in"], output_ids=["rs_1", "fc_1"], previous_response_id=None,
        created_at=NOW, expires_at=NOW + TTL,
    )
    await store.save_response(stored, [user, reasoning, call])

    got = await store.get_response("resp_1", NOW)
    assert got == stored
    assert orjson.dumps(got.body) == orjson.dumps(stored.body)  # key order too

    loaded = await store.load_context("resp_1", NOW)
    assert loaded is not None
    assert loaded[0] == stored
    assert [orjson.dumps(i) for i in loaded[1]] == [orjson.dumps(i) for i in
                                                    (user, reasoning, call)]
    assert await store.get_items(["fc_1", "msg_in", "nope"]) == {"fc_1": call, "msg_in": user}
    assert await store.get_items([]) == {}


async def test_unknown_response(store: Store) -> None:
    assert await store.get_response("resp_nope", NOW) is None
    assert await store.load_context("resp_nope", NOW) is None
    assert await store.list_input_items("resp_nope", limit=10, order="asc", after=None,
                                        before=None, now=NOW) is None
    assert await store.delete_response("resp_nope", NOW) is False


async def test_save_twice_replaces_response_and_keeps_items_once(
    store: Store, backend: Backend
) -> None:
    first = response("resp_1", ["msg_in"], [], status="in_progress")
    await store.save_response(first, [message("msg_in", "hi")])
    final = response("resp_1", ["msg_in"], ["msg_out"])
    changed_input = message("msg_in", "a different text under the same id")
    await store.save_response(final, [changed_input, message("msg_out", "hello", "assistant")])

    got = await store.get_response("resp_1", NOW)
    assert got is not None and got.body["status"] == "completed"
    assert got.output_ids == ["msg_out"]
    assert await backend.count("responses") == 1
    assert await backend.count("items") == 2
    loaded = await store.load_context("resp_1", NOW)
    assert loaded is not None
    assert loaded[1] == [message("msg_in", "hi"), message("msg_out", "hello", "assistant")]


async def test_failed_save_stores_nothing_and_store_keeps_working(
    store: Store, backend: Backend
) -> None:
    bad = {"id": None, "type": "message"}  # violates items.id NOT NULL inside the transaction
    with pytest.raises(ServerError):
        await store.save_response(response("resp_1", ["msg_in"], []), [message("msg_in", "x"), bad])
    assert await store.get_response("resp_1", NOW) is None
    assert await backend.count("items") == 0
    await save_turn(store, "resp_2", None)
    assert await store.get_response("resp_2", NOW) is not None


# -- history ---------------------------------------------------------------------------------


async def test_600_turn_chain_loads_in_order_with_two_statements(store: Store) -> None:
    turns: list[StoredResponse] = []
    parent = None
    for n in range(600):
        parent = await save_turn(store, f"resp_{n:03d}", parent, n_inputs=1 + n % 2)
        turns.append(parent)

    expected: list[str] = []
    for turn in turns:
        expected += [i for i in turn.context_ids if i not in expected] + turn.output_ids
    for turn, depth in ((turns[0], 1), (turns[9], 10), (turns[-1], 600)):
        before = store.statements  # type: ignore[attr-defined]
        loaded = await store.load_context(turn.id, NOW)
        assert loaded is not None
        got = ids(loaded[1])
        assert got == turn.context_ids + turn.output_ids
        assert got == expected[: len(got)]
        assert got[-1] == f"resp_{depth - 1:03d}_out"
        assert loaded[1][0] == message("resp_000_in0", "question 0 of resp_000")
        assert store.statements - before <= 2  # type: ignore[attr-defined]
    assert len(expected) == 600 + 900


async def test_branches_see_their_own_context(store: Store) -> None:
    root = await save_turn(store, "resp_root", None)
    left = await save_turn(store, "resp_left", root)
    right = await save_turn(store, "resp_right", root)
    deeper = await save_turn(store, "resp_deeper", left)

    shared = ["resp_root_in0", "resp_root_out"]
    got = {}
    for branch in (left, right, deeper):
        loaded = await store.load_context(branch.id, NOW)
        assert loaded is not None
        got[branch.id] = ids(loaded[1])
    assert got["resp_left"] == shared + ["resp_left_in0", "resp_left_out"]
    assert got["resp_right"] == shared + ["resp_right_in0", "resp_right_out"]
    assert got["resp_deeper"] == got["resp_left"] + ["resp_deeper_in0", "resp_deeper_out"]


async def test_missing_item_is_skipped_and_logged(
    store: Store, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    await store.save_response(response("resp_1", ["a", "b", "c"], []),
                              [message(i, i) for i in "abc"])
    await backend.execute("DELETE FROM items WHERE id = 'b'")
    # read by a replica that never held the items (the writer may keep them in memory)
    replica = await backend.open()
    loaded = await replica.load_context("resp_1", NOW)
    assert loaded is not None and ids(loaded[1]) == ["a", "c"]
    assert "missing item b" in caplog.text


# -- input items -----------------------------------------------------------------------------


async def test_list_input_items_pages_both_ways(store: Store) -> None:
    context = [f"item_{n}" for n in range(7)]
    await store.save_response(response("resp_1", context, ["out"]),
                              [message(i, i) for i in context] + [message("out", "o", "x")])

    async def listing(**kw: object) -> tuple[list[str], bool]:
        args = {"limit": 3, "order": "asc", "after": None, "before": None, "now": NOW} | kw
        got = await store.list_input_items("resp_1", **args)  # type: ignore[arg-type]
        assert got is not None
        return ids(got.items), got.has_more

    asc = context
    desc = context[::-1]
    assert await listing() == (asc[:3], True)
    assert await listing(after="item_2") == (asc[3:6], True)
    assert await listing(after="item_5") == (asc[6:], False)
    assert await listing(after="item_6") == ([], False)
    assert await listing(limit=100) == (asc, False)
    assert await listing(limit=7) == (asc, False)
    assert await listing(limit=6) == (asc[:6], True)
    assert await listing(order="desc") == (desc[:3], True)
    assert await listing(order="desc", after="item_4") == (["item_3", "item_2", "item_1"], True)
    assert await listing(order="desc", after="item_1") == (["item_0"], False)
    # before: the page just before the cursor, has_more when more lie further back
    assert await listing(before="item_5") == (["item_2", "item_3", "item_4"], True)
    assert await listing(before="item_3") == (["item_0", "item_1", "item_2"], False)
    assert await listing(order="desc", before="item_2") == (["item_5", "item_4", "item_3"], True)
    assert await listing(after="item_0", before="item_3") == (["item_1", "item_2"], False)
    assert await listing(after="item_0", before="item_6", limit=2) == (["item_1", "item_2"], True)
    assert await listing(after="nope") == ([], False)
    assert await listing(before="out") == ([], False)  # outputs are not input items
    full = await store.list_input_items("resp_1", limit=1, order="asc", after=None, before=None,
                                        now=NOW)
    assert full is not None and full.items == [message("item_0", "item_0")]


def test_page_edges() -> None:
    assert page([], limit=5, after=None, before=None) == ([], False)
    assert page(["a", "b"], limit=0, after=None, before=None) == ([], True)
    assert page(["a", "b", "c"], limit=5, after="c", before="a") == ([], False)


# -- expiry and deletion ---------------------------------------------------------------------


async def test_expiry_hides_and_purge_removes(store: Store, backend: Backend) -> None:
    old = await save_turn(store, "resp_old", None, expires_at=NOW + 10)
    await save_turn(store, "resp_live", None, expires_at=NOW + 100)

    assert await store.get_response(old.id, NOW + 9) is not None
    for hidden in (NOW + 10, NOW + 11):
        assert await store.get_response(old.id, hidden) is None
        assert await store.load_context(old.id, hidden) is None
        assert await store.list_input_items(old.id, limit=5, order="asc", after=None,
                                            before=None, now=hidden) is None
        assert await store.delete_response(old.id, hidden) is False

    assert await store.purge_expired(NOW + 9) == 0
    assert await store.purge_expired(NOW + 10) == 1
    assert await backend.count("responses") == 1
    assert await store.get_items(["resp_old_in0", "resp_old_out", "resp_live_out"]) == {
        "resp_live_out": message("resp_live_out", "answer of resp_live", "assistant")
    }
    assert await store.purge_expired(NOW + 10) == 0


async def test_purge_keeps_what_a_live_child_builds_on(store: Store, backend: Backend) -> None:
    parent = await save_turn(store, "resp_p", None, expires_at=NOW + 10)
    child = await save_turn(store, "resp_c", parent, expires_at=NOW + 20)
    lone = await save_turn(store, "resp_lone", None, expires_at=NOW + 10)

    assert await store.purge_expired(NOW + 10) == 1  # only the lone one can go yet
    assert await store.get_response(parent.id, NOW + 10) is None
    assert await store.get_response(lone.id, NOW + 10) is None
    loaded = await store.load_context(child.id, NOW + 10)
    assert loaded is not None
    assert ids(loaded[1]) == ["resp_p_in0", "resp_p_out", "resp_c_in0", "resp_c_out"]

    assert await store.purge_expired(NOW + 20) == 2
    assert await backend.count("responses") == 0
    assert await backend.count("items") == 0


async def test_purge_removes_long_expired_chains_in_batches(
    store: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"respond.store.{backend.module}.PURGE_BATCH", 7)
    parent = None
    for n in range(30):
        parent = await save_turn(store, f"resp_{n}", parent, expires_at=NOW + n)
    assert await store.purge_expired(NOW + 29) == 30
    assert await backend.count("responses") == 0
    assert await backend.count("items") == 0


async def test_delete_leaf_removes_its_items(store: Store) -> None:
    parent = await save_turn(store, "resp_p", None)
    leaf = await save_turn(store, "resp_leaf", parent)

    assert await store.delete_response(leaf.id, NOW) is True
    assert await store.get_response(leaf.id, NOW) is None
    assert await store.load_context(leaf.id, NOW) is None
    assert await store.get_items(["resp_leaf_in0", "resp_leaf_out"]) == {}
    loaded = await store.load_context(parent.id, NOW)
    assert loaded is not None and ids(loaded[1]) == ["resp_p_in0", "resp_p_out"]
    assert await store.delete_response(leaf.id, NOW) is False


async def test_delete_parent_keeps_every_branch_whole(store: Store, backend: Backend) -> None:
    parent = await save_turn(store, "resp_p", None)
    left = await save_turn(store, "resp_l", parent)
    right = await save_turn(store, "resp_r", parent)

    assert await store.delete_response(parent.id, NOW) is True
    assert await store.get_response(parent.id, NOW) is None
    assert await store.load_context(parent.id, NOW) is None
    shared = ["resp_p_in0", "resp_p_out"]
    for branch in (left, right):
        loaded = await store.load_context(branch.id, NOW)
        assert loaded is not None
        assert ids(loaded[1]) == shared + [f"{branch.id}_in0", f"{branch.id}_out"]

    # The branch that would have inherited the parent's items goes first: the other one
    # must still see the whole conversation.
    assert await store.delete_response(left.id, NOW) is True
    loaded = await store.load_context(right.id, NOW)
    assert loaded is not None
    assert ids(loaded[1]) == shared + ["resp_r_in0", "resp_r_out"]
    listed = await store.list_input_items(right.id, limit=10, order="asc", after=None,
                                          before=None, now=NOW)
    assert listed is not None and ids(listed.items) == shared + ["resp_r_in0"]

    # Once nothing builds on the deleted parent any more, it goes with its items.
    assert await store.delete_response(right.id, NOW) is True
    assert await backend.count("responses") == 0
    assert await backend.count("items") == 0


async def test_deleted_parent_is_purged_after_its_child(store: Store, backend: Backend) -> None:
    parent = await save_turn(store, "resp_p", None, expires_at=NOW + 50)
    child = await save_turn(store, "resp_c", parent, expires_at=NOW + 60)
    assert await store.delete_response(parent.id, NOW) is True
    assert await store.purge_expired(NOW) == 0  # the child still builds on it
    assert (await store.load_context(child.id, NOW)) is not None
    assert await store.purge_expired(NOW + 60) == 2
    assert await backend.count("items") == 0
