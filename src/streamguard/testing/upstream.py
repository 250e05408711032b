"""A local LLM upstream that generates on its own clock, for proving that streams really stop.

Real model servers (vLLM, llama.cpp, Ollama, the hosted APIs) keep generating while the client
is merely slow or distracted: a whole answer fits in the socket buffers. They stop when the
connection closes. ``Upstream`` behaves the same way, speaks each provider's streaming wire
format, and records for every request when each token was generated and when it saw the client
go away. That turns "did my stack stop paying for tokens nobody reads?" into a number.

Measure the bleed of your own stack: point the SDK at the upstream, stop consuming the way your
application does, and count what the upstream generated after that instant::

    import time
    import openai
    from streamguard.testing import Upstream

    with Upstream(token_interval=0.02) as up:
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            max_tokens=200, stream=True,
        )
        for i, _chunk in enumerate(stream):
            if i == 10:
                break  # the consumer leaves; the stream object is still alive
        stopped = time.monotonic_ns()
        time.sleep(1.0)
        (record,) = up.requests
        print(record.tokens_after(stopped))  # ~50 without a guard, 0 or 1 with one

What it serves (base URLs as each SDK wants them): OpenAI chat completions, legacy completions
and Responses at ``up.openai_base_url``; Anthropic Messages at ``up.anthropic_base_url``; Ollama
``/api/chat`` and ``/api/generate`` at ``up.ollama_host``; Gemini ``generateContent`` and
``streamGenerateContent`` at ``up.gemini_base_url``; Mistral chat, agents, FIM and
conversations (start, append, restart) at ``up.mistral_base_url`` (see ``_wire_mistral``).
Also at ``up.openai_base_url``: audio transcriptions and image edits (multipart), image
generation, and Assistants runs (``threads/runs``, ``threads/{id}/runs``,
``.../submit_tool_outputs``);
an image's ``b64_json`` is its tokens' text (``image_text`` reads it back).

Token ``i`` is the text ``" w{i}"`` (see ``expected_text``). A turn has as many tokens as the
request's limit (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``, Ollama's
``options.num_predict``, Gemini's ``generationConfig.maxOutputTokens``) and then ends with the
provider's "length" reason; without a limit it has ``default_max_tokens`` and ends with "stop".
Request headers override per request: ``x-upstream-tokens`` (the answer's natural length; it
ends with "stop" when shorter than the limit), ``x-upstream-token-interval`` (seconds) and
``x-upstream-fault`` (see ``Fault``). Input tokens are the words of the prompt (at least 1).

All times are ``time.monotonic_ns()`` of this process, so tests compare them with their own
readings; ``RequestRecord.wall_ns`` converts to Unix nanoseconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading
import time

from streamguard.exceptions import MissingExtraError

try:
    import uvicorn
except ModuleNotFoundError:  # one line naming the extra, not a traceback from deep inside
    raise MissingExtraError("streamguard.testing's upstream", "testing") from None

from streamguard.testing._wire_common import expected_text, token_text
from streamguard.testing._wire_openai_events import image_text
from streamguard.testing._wire_records import Fault, FaultKind, RequestRecord
from streamguard.testing._wire_server import App

__all__ = [
    "Fault",
    "FaultKind",
    "RequestRecord",
    "Upstream",
    "expected_text",
    "image_text",
    "token_text",
]


class Upstream:
    """A local multi-provider LLM server on ``127.0.0.1`` (ephemeral port), in a daemon thread.

    ``start()`` (or ``with``) returns once it accepts connections; ``stop()`` ends every request
    in flight (connections are reset, records say ``shutdown``), stops the server and joins its
    thread: nothing is left running. A second ``stop()`` is a no-op.

    ``token_interval`` is the time between tokens in seconds; ``default_max_tokens`` is the
    length of an answer whose request sets no limit; no answer is longer than
    ``max_tokens_cap``. ``responses_incomplete_on_length`` makes the Responses API end a turn
    cut by ``max_output_tokens`` with ``response.incomplete``, as OpenAI does (by default it
    sends ``response.completed`` so ``get_final_response()`` works).

    Example::

        with Upstream(token_interval=0.01) as up:
            client = anthropic.Anthropic(base_url=up.anthropic_base_url, api_key="test")
            messages = [{"role": "user", "content": "hi"}]
            with client.messages.stream(model="m", max_tokens=5, messages=messages) as s:
                assert s.get_final_message().usage.output_tokens == 5
            (record,) = up.wait_for_requests(1)
            assert record.wait_done(1.0) and record.completed
    """

    def __init__(
        self,
        token_interval: float = 0.02,
        default_max_tokens: int = 64,
        *,
        max_tokens_cap: int = 10_000,
        host: str = "127.0.0.1",
        port: int = 0,
        responses_incomplete_on_length: bool = False,
    ) -> None:
        if token_interval < 0 or default_max_tokens < 0 or max_tokens_cap < 0:
            raise ValueError("token_interval, default_max_tokens and max_tokens_cap must be >= 0.")
        self.token_interval = token_interval
        self.default_max_tokens = default_max_tokens
        self.max_tokens_cap = max_tokens_cap
        self.responses_incomplete_on_length = responses_incomplete_on_length
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: list[RequestRecord] = []
        self._faults: collections.deque[Fault] = collections.deque()
        self._unmatched: list[str] = []
        self._ids = 0
        self._app = App(self)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Upstream:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("This Upstream is already started; create another one.")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,  # leave the application's logging configuration alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="auto",  # the WebSocket APIs (_wire_realtime) when `websockets` is installed
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = self._app.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"streamguard-upstream-{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The test upstream did not start: {self._error!r}")
            time.sleep(0.002)
        return self

    def _serve(self, sock: socket.socket) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by start(); a daemon thread has no one else
            self._error = exc
        finally:
            sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        """End requests in flight, stop the server, join its thread. Idempotent."""
        thread, server, loop = self._thread, self._server, self._loop
        if thread is None or server is None:
            return
        if loop is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                loop.call_soon_threadsafe(self._app.shutdown)
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``"""
        return f"http://{self._host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """For ``openai.OpenAI(base_url=...)``: ``url + "/v1"``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For ``anthropic.Anthropic(base_url=...)``; the SDK appends ``/v1/messages``."""
        return self.url

    @property
    def ollama_host(self) -> str:
        """For ``ollama.Client(host=...)`` or ``OLLAMA_HOST`` (read when ``ollama`` is imported)."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """For ``genai.Client(api_key="x", http_options={"base_url": ...})``."""
        return self.url

    @property
    def mistral_base_url(self) -> str:
        """For ``Mistral(server_url=...)``; the SDK appends ``/v1/chat/completions`` (or
        ``/v1/agents/completions``, ``/v1/fim/completions``, ``/v1/conversations...``)."""
        return self.url + "/mistral"

    # -- records and faults ----------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """The records so far, oldest first (a new list; the records themselves are live)."""
        with self._lock:
            return list(self._records)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RequestRecord]:
        """Wait until at least ``n`` requests have been received; raises TimeoutError."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._records) >= n, timeout):
                raise TimeoutError(
                    f"The test upstream received {len(self._records)} of {n} requests within "
                    f"{timeout} s; paths it does not serve: {self._unmatched or 'none'}."
                )
            return list(self._records)

    def add_fault(self, fault: Fault) -> None:
        """Queue ``fault`` for the next request (first in, first out; one request each)."""
        with self._lock:
            self._faults.append(fault)

    def reset(self) -> None:
        """Forget the records and the queued faults."""
        with self._lock:
            self._records.clear()
            self._faults.clear()
            self._unmatched.clear()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _next_id(self) -> int:
        with self._lock:
            self._ids += 1
            return self._ids

    def _add_record(self, record: RequestRecord) -> None:
        with self._changed:
            self._records.append(record)
            self._changed.notify_all()

    def _note_unmatched(self, what: str) -> None:
        with self._lock:
            self._unmatched.append(what)
