"""The hot path's value classes (Item, Set and the Add, Open and Confirm records) behave as
the dataclasses they replaced did, in both builds: `make test-compiled` runs this file against
the native classes mypyc makes of them."""

from __future__ import annotations

import copy
import pickle

import pytest

from kestrelq.journal import format as fmt
from kestrelq.journal.item import Item
from kestrelq.protocol.commands import Set

ITEM = Item(b"data", 7, 1000, 2000, 1)
VALUES = [
    ITEM,
    Set("q", 1, 2, b"x", noreply=True),
    fmt.Add(ITEM),
    fmt.Open(5),
    fmt.Confirm(5),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_equal_by_value_hashable_copyable_picklable(value: object) -> None:
    twin = copy.copy(value)
    assert twin == value and hash(twin) == hash(value) and twin is not value
    assert copy.deepcopy(value) == value
    assert pickle.loads(pickle.dumps(value)) == value
    assert repr(value).startswith(type(value).__name__ + "(")


def test_equality_is_per_class_and_per_field() -> None:
    assert fmt.Open(5) != fmt.Confirm(5)  # same field, another record
    assert fmt.Open(5) != fmt.Open(6)
    assert ITEM.with_deliveries(2) != ITEM
    assert ITEM != (b"data", 7, 1000, 2000, 1)
    assert len({fmt.Open(1), fmt.Open(1), fmt.Confirm(1)}) == 2


def test_match_takes_the_fields_in_order() -> None:
    match ITEM:
        case Item(data, flags, added, expires, deliveries):
            assert (data, flags, added, expires, deliveries) == (b"data", 7, 1000, 2000, 1)
    match fmt.Add(ITEM):
        case fmt.Add(item):
            assert item is ITEM
    match Set("q", 1, 2, b"x"):
        case Set(queue, flags, exptime, data, noreply):
            assert (queue, flags, exptime, data, noreply) == ("q", 1, 2, b"x", False)


def test_the_with_methods_change_only_what_they_name() -> None:
    assert ITEM.with_deliveries(0) == Item(b"data", 7, 1000, 2000, 0)
    assert ITEM.with_expiry(0) == Item(b"data", 7, 1000, 0, 1)
    assert ITEM.with_expiry(0, deliveries=0) == Item(b"data", 7, 1000, 0, 0)
    assert ITEM.delivered() == Item(b"data", 7, 1000, 2000, 2)
