"""Calling injected collaborators safely: maybe-async callbacks, optional sink methods."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def maybe_await(value: T | Awaitable[T]) -> T:
    """``value``, awaited first when a callback returned an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def call_optional(obj: object, name: str) -> Any:
    """Call ``obj.name()`` if it exists; a failure is logged, never raised (returns None)."""
    method = getattr(obj, name, None)
    if method is None:
        return None
    try:
        return method()
    except Exception:
        log.exception("%r.%s() failed", obj, name)
        return None
