"""The Redis budget store: one budget shared by every process and replica.

Each budget window is one Redis hash (``spent``, ``reserved`` in integer nano-USD, exact in
Lua's doubles up to 9 million USD per key) that
expires with its window. Reserving and settling are single Lua scripts, so they are atomic
across processes. A Redis that cannot be reached raises ``StoreUnavailable``, and the budget
fails open or closed as configured. A forked child builds its own client (connections) in the
runtime's at-fork hook.
"""

from __future__ import annotations

from typing import Any

from streamguard._extras import require
from streamguard._money.budget import StoreUnavailable

__all__ = ["RedisBudgetStore"]

_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local left = limit - spent - reserved
local grant = amount
if left < grant then grant = left end
if grant < 0 then grant = 0 end
if grant > 0 then redis.call('HINCRBY', KEYS[1], 'reserved', string.format('%.0f', grant)) end
local ttl = tonumber(ARGV[3])
if ttl > 0 and redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return string.format('%.0f', grant)
"""

_SETTLE = """
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local release = tonumber(ARGV[1])
if release > reserved then release = reserved end
redis.call('HINCRBY', KEYS[1], 'reserved', string.format('%.0f', -release))
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 and redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


class RedisBudgetStore:
    """Budget usage in Redis (``redis://host:port/db``). Needs the ``redis`` extra."""

    def __init__(
        self, url: str, *, prefix: str = "streamguard:budget:", timeout: float = 0.5
    ) -> None:
        require("redis", feature="A Redis budget store (STREAMGUARD_REDIS_URL)", extra="redis")
        import redis

        self._url, self._timeout = url, timeout
        self._prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._connect()

    def _connect(self) -> None:
        import redis

        self._client: Any = redis.Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)

    def _after_fork_in_child(self) -> None:
        # The inherited pool's sockets are the parent's: a client (and pool) of the child's own.
        self._connect()

    def reserve(self, key: str, amount: int, limit: int, ttl: int | None) -> int:
        try:
            return int(self._reserve(keys=[self._prefix + key], args=[amount, limit, ttl or 0]))
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from exc

    def settle(self, key: str, reserved: int, spent: int, ttl: int | None) -> None:
        try:
            self._settle(keys=[self._prefix + key], args=[reserved, spent, ttl or 0])
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from exc

    def usage(self, key: str) -> tuple[int, int]:
        try:
            values = self._client.hmget(self._prefix + key, "spent", "reserved")
        except self._errors as exc:
            raise StoreUnavailable(str(exc)) from exc
        return int(values[0] or 0), int(values[1] or 0)

    def close(self) -> None:
        self._client.close()
