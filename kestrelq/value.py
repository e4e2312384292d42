"""`@value`: an immutable value class for the hot path.

The type checker sees a frozen dataclass (assigning a field is an error), while the runtime
gets a plain slotted dataclass: a frozen dataclass builds each instance through
object.__setattr__, four times slower, and every command creates several of these objects
(the command, its item, its journal record).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
