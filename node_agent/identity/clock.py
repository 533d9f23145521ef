"""Time as the identity package sees it: an injected ``Clock`` so renewals can be fast-forwarded."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """the current time, timezone-aware UTC"""
        ...

    async def sleep(self, seconds: float) -> None:
        """return after ``seconds`` of this clock's time have passed"""
        ...


class SystemClock:
    """Wall-clock time and ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
