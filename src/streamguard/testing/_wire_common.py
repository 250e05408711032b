"""What every wire format of the test upstream shares: the turn being generated, the token text,
prompt counting, and the SSE/NDJSON framing.

A wire format turns one generated turn into bytes: frames sent right after the response headers
(``head``), one frame per token (``token``), the closing frames (``tail``), or a whole JSON body
when the request did not ask for a stream (``whole``). It never touches the clock or the socket;
the server in ``_wire_server.py`` decides when each frame is produced and sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Finish = Literal["length", "stop"]

# Keys whose string values count as prompt text, wherever they appear in a request body.
_TEXT_KEYS = frozenset({"content", "text", "prompt", "input", "system", "instructions"})


def token_text(index: int) -> str:
    """The text of token ``index`` (0-based): ``" w0"``, ``" w1"``, ..."""
    return f" w{index}"


def expected_text(n_tokens: int) -> str:
    """The text a complete turn of ``n_tokens`` tokens carries."""
    return "".join(token_text(i) for i in range(n_tokens))


def count_words(value: object, *, is_text: bool = True) -> int:
    """Whitespace-separated words in the prompt-bearing strings of a request body fragment."""
    if isinstance(value, str):
        return len(value.split()) if is_text else 0
    if isinstance(value, list):
        return sum(count_words(item, is_text=is_text) for item in value)
    if isinstance(value, Mapping):
        return sum(count_words(v, is_text=k in _TEXT_KEYS) for k, v in value.items())
    return 0


def input_tokens_of(body: Mapping[str, Any], *fields: str) -> int:
    """Input tokens the upstream reports: words in the named prompt fields, at least 1."""
    return max(1, sum(count_words(body.get(name)) for name in fields))


def positive_int(value: object) -> int | None:
    """``value`` if it is a positive int (bools excluded), else None: "no limit requested"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(data: object, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else dumps(data)
    prefix = f"event: {event}\n" if event is not None else ""
    return f"{prefix}data: {payload}\n\n".encode()


def ndjson(obj: object) -> bytes:
    return (dumps(obj) + "\n").encode()


@dataclass(frozen=True)
class ParsedRequest:
    """What a wire format reads from a request body."""

    model: str
    stream: bool
    max_tokens: int | None
    input_tokens: int
    include_usage: bool = True
    #: A background response (openai Responses ``background: true``): generated to the end
    #: after the client disconnects, until cancelled.
    background: bool = False


@dataclass
class Turn:
    """One generated answer, as the wire formats see it."""

    request_id: int
    model: str
    created: int  # Unix seconds, as providers put in their payloads
    input_tokens: int
    n_tokens: int  # tokens the turn will have if it runs to the end
    finish: Finish
    include_usage: bool
    max_tokens: int | None
    pieces: list[str] = field(default_factory=list)
    events: int = 0  # frames numbered so far, for formats that number their events
    elapsed_ns: int = 0  # generation time so far, for formats that report durations
    background: bool = False  # generated on after the client leaves, until cancelled

    @property
    def generated(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Wire:
    """Base of the wire formats: one subclass per provider API."""

    provider: ClassVar[str]
    api: ClassVar[str]
    media_type: ClassVar[str] = "text/event-stream; charset=utf-8"

    def parse(
        self, body: Mapping[str, Any], path_model: str | None, stream: bool | None
    ) -> ParsedRequest:
        raise NotImplementedError

    def head(self, turn: Turn) -> list[bytes]:
        return []

    def token(self, turn: Turn, index: int, text: str) -> bytes:
        raise NotImplementedError

    def tail(self, turn: Turn) -> list[bytes]:
        raise NotImplementedError

    def tail_reports_usage(self, turn: Turn) -> bool:
        """Whether ``tail`` carries the final usage (OpenAI only with ``include_usage``)."""
        return True

    def whole(self, turn: Turn) -> dict[str, Any]:
        raise NotImplementedError

    def error(self, status: int, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def malformed(self) -> bytes:
        """A frame whose payload is not valid JSON."""
        return b'data: {"malformed": \n\n'


def plan(requested: int | None, natural: int | None, default: int, cap: int) -> tuple[int, Finish]:
    """How many tokens a turn has and why it ends."""
    n: int
    finish: Finish
    if natural is None:
        n, finish = (default, "stop") if requested is None else (requested, "length")
    elif requested is not None and requested <= natural:
        n, finish = requested, "length"
    else:
        n, finish = natural, "stop"
    return (cap, "length") if n > cap else (n, finish)
