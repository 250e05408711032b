"""One small adapter per provider SDK: all the conformance suite needs to know about an SDK.

An adapter builds a client against the test upstream, opens a stream limited to N tokens, and
says which chunks carry model output (the upstream's token ``i`` is the text ``" w{i}"``).
Adding gemini or mistral means adding one class here and its name to ``ADAPTERS``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, ClassVar

from streamguard.testing import Upstream

__all__ = ["ADAPTERS", "Adapter"]

MESSAGES: Any = [{"role": "user", "content": "count slowly"}]  # Any: each SDK has its TypedDict
MODEL = "conformance-model"


class Adapter:
    """What the suite needs from one SDK. ``open`` returns the stream (an awaitable of it for
    the async clients, as the SDKs do), with the request sent or about to be sent."""

    name: ClassVar[str]
    #: The receipt's provider and operation (an entry point's adapter is named after both).
    provider: ClassVar[str] = ""  # "": the adapter's name
    operation: ClassVar[str] = "chat"
    receipt_model: ClassVar[str | None] = MODEL  # None: the request names no model
    #: Whether the request carries the token limit ``open`` is given (else the upstream is
    #: told the answer's length with ``x-upstream-tokens`` and the receipt has no limit).
    sends_max_tokens: ClassVar[bool] = True
    #: Whether cutting the stream stops the generation (False for a server-side run or session
    #: that goes on without the connection: the receipt then prevents nothing).
    prevents: ClassVar[bool] = True
    #: ``"module:attribute"`` that the entry point needs; an SDK release without it (the
    #: oldest ends in `make compat`) skips the adapter, naming what is missing.
    requires: ClassVar[str] = ""
    #: Whether ``open`` returns the SDK's stream manager (``with`` gives the event handler).
    helper: ClassVar[bool] = False
    #: Importable module of the SDK; the provider is skipped when it is missing.
    module: ClassVar[str]
    #: Whether the SDK's stream objects are context managers, sync and async.
    supports_with: ClassVar[bool] = True
    #: Whether the SDK's stream objects expose the HTTP response as ``.response``.
    has_response: ClassVar[bool] = True
    #: Whether a stream cut before its end still reports input tokens (at its start).
    input_known_when_cut: ClassVar[bool] = False
    #: Why the SDK's async client runs on asyncio only (None: it runs on trio too). Checked
    #: without StreamGuard by test_loops.py, so that a release that adds trio is noticed.
    asyncio_only: ClassVar[str | None] = None

    @property
    def receipt_provider(self) -> str:
        return self.provider or self.name

    def sdk(self) -> Any:
        return importlib.import_module(self.module)

    def missing(self) -> str | None:
        """What the installed SDK lacks for this entry point (None: nothing)."""
        if not self.requires:
            return None
        module_name, _, attribute = self.requires.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return self.requires
        return None if hasattr(module, attribute) else self.requires

    def client(self, up: Upstream, is_async: bool) -> Any:
        raise NotImplementedError

    def open(self, client: Any, max_tokens: int) -> Any:
        raise NotImplementedError

    def text(self, chunk: Any) -> str | None:
        """The model output a chunk carries, None (or empty) for any other chunk."""
        raise NotImplementedError

    def stream_types(self, is_async: bool) -> tuple[type[Any], ...]:
        """The SDK's own stream classes: ``isinstance`` must still hold under the guard."""
        raise NotImplementedError

    async def aclose(self, stream: Any) -> None:
        """Close an async stream the way the SDK names it."""
        await stream.close()

    async def close_client(self, client: Any, is_async: bool) -> None:
        if is_async:
            await client.close()
        else:
            client.close()


class OpenAIAdapter(Adapter):
    name = "openai"
    module = "openai"

    def client(self, up: Upstream, is_async: bool) -> Any:
        openai = self.sdk()
        cls = openai.AsyncOpenAI if is_async else openai.OpenAI
        return cls(base_url=up.openai_base_url, api_key="test", max_retries=0)

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=max_tokens, stream=True
        )

    def text(self, chunk: Any) -> str | None:
        return chunk.choices[0].delta.content if chunk.choices else None

    def stream_types(self, is_async: bool) -> tuple[type[Any], ...]:
        openai = self.sdk()
        return (openai.AsyncStream,) if is_async else (openai.Stream,)


class AnthropicAdapter(Adapter):
    name = "anthropic"
    module = "anthropic"
    input_known_when_cut = True  # message_start carries the input tokens

    def client(self, up: Upstream, is_async: bool) -> Any:
        anthropic = self.sdk()
        cls = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return cls(base_url=up.anthropic_base_url, api_key="test", max_retries=0)

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.messages.create(
            model=MODEL, max_tokens=max_tokens, messages=MESSAGES, stream=True
        )

    def text(self, chunk: Any) -> str | None:
        if chunk.type == "content_block_delta":
            return getattr(chunk.delta, "text", None)
        return None

    def stream_types(self, is_async: bool) -> tuple[type[Any], ...]:
        anthropic = self.sdk()
        return (anthropic.AsyncStream,) if is_async else (anthropic.Stream,)


class OllamaAdapter(Adapter):
    name = "ollama"
    module = "ollama"
    supports_with = False  # chat(stream=True) returns a plain (async) generator
    has_response = False

    def client(self, up: Upstream, is_async: bool) -> Any:
        ollama = self.sdk()
        cls = ollama.AsyncClient if is_async else ollama.Client
        return cls(host=up.ollama_host)

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.chat(
            model=MODEL, messages=MESSAGES, stream=True, options={"num_predict": max_tokens}
        )

    def text(self, chunk: Any) -> str | None:
        message = chunk.message
        return message.content if message is not None else None

    def stream_types(self, is_async: bool) -> tuple[type[Any], ...]:
        import types

        return (types.AsyncGeneratorType,) if is_async else (types.GeneratorType,)

    async def aclose(self, stream: Any) -> None:
        await stream.aclose()

    async def close_client(self, client: Any, is_async: bool) -> None:
        if hasattr(client, "close"):
            await super().close_client(client, is_async)
        elif is_async:  # ollama 0.4 clients have no close(): close their httpx client
            await client._client.aclose()
        else:
            client._client.close()


class GeminiAdapter(Adapter):
    name = "gcp.gemini"
    module = "google.genai"
    supports_with = False  # generate_content_stream returns a plain (async) generator
    has_response = False
    input_known_when_cut = True  # every chunk carries the running usage, the prompt's included
    asyncio_only = "google-genai's async client keeps a client per asyncio.get_running_loop()"

    def client(self, up: Upstream, is_async: bool) -> Any:
        client = self.sdk().Client(api_key="test", http_options={"base_url": up.gemini_base_url})
        return client.aio if is_async else client  # the Client's __del__ closes its sync pool

    def open(self, client: Any, max_tokens: int) -> Any:
        config = {"max_output_tokens": max_tokens}
        return client.models.generate_content_stream(
            model=MODEL, contents="count slowly", config=config
        )

    def text(self, chunk: Any) -> str | None:
        return chunk.text

    def stream_types(self, is_async: bool) -> tuple[type[Any], ...]:
        import types

        return (types.AsyncGeneratorType,) if is_async else (types.GeneratorType,)

    async def aclose(self, stream: Any) -> None:
        await stream.aclose()

    async def close_client(self, client: Any, is_async: bool) -> None:
        if is_async:
            await client.aclose()
        else:
            client.close()


class _MistralClient:
    """One mistralai client serves both modes: the adapter remembers which one the case runs."""

    def __init__(self, sdk: Any, is_async: bool) -> None:
        self.sdk = sdk
        self.is_async = is_async


class MistralAdapter(Adapter):
    name = "mistral_ai"
    module = "mistralai.client"
    asyncio_only = "mistralai's async calls run their sync steps with asyncio.to_thread"

    def client(self, up: Upstream, is_async: bool) -> Any:
        sdk = self.sdk().Mistral(api_key="test", server_url=up.mistral_base_url)
        return _MistralClient(sdk, is_async)

    def open(self, client: Any, max_tokens: int) -> Any:
        chat = client.sdk.chat
        stream = chat.stream_async if client.is_async else chat.stream
        return stream(model=MODEL, messages=MESSAGES, max_tokens=max_tokens)

    def text(self, chunk: Any) -> str | None:
        choices = chunk.data.choices
        return choices[0].delta.content if choices else None

    def stream_types(self, is_async: bool) -> tuple[type[Any], ...]:
        from mistralai.client.utils.eventstreaming import EventStream, EventStreamAsync

        return (EventStreamAsync,) if is_async else (EventStream,)

    async def close_client(self, client: Any, is_async: bool) -> None:
        await client.sdk.__aexit__(None, None, None)
        client.sdk.__exit__(None, None, None)


# ------------------------------------------------ openai entry points other than chat (h15e)
# Each is the openai SDK's Stream/AsyncStream of its own event type, guarded in place by the
# same choke point as chat; the upstream serves its wire format (testing/_wire_openai_events).


def _length(max_tokens: int) -> dict[str, str]:
    """The answer's length, for requests that carry no token limit."""
    return {"x-upstream-tokens": str(max_tokens)}


class _OpenAIEntryPoint(OpenAIAdapter):
    provider = "openai"


class OpenAITranscriptionsAdapter(_OpenAIEntryPoint):
    name = "openai.transcriptions"
    requires = "openai.types.audio:TranscriptionStreamEvent"
    operation = "transcription"
    sends_max_tokens = False

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.audio.transcriptions.create(
            model=MODEL,
            file=("speech.wav", b"RIFF\x00\x00\x00\x00WAVE", "audio/wav"),
            prompt="count slowly",
            stream=True,
            extra_headers=_length(max_tokens),
        )

    def text(self, chunk: Any) -> str | None:
        return chunk.delta if chunk.type == "transcript.text.delta" else None


class OpenAIImagesAdapter(_OpenAIEntryPoint):
    """Each upstream token is one partial image whose bytes are the token's text."""

    name = "openai.images"
    requires = "openai.types:ImageGenStreamEvent"
    operation = "image_generation"
    sends_max_tokens = False

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.images.generate(
            model=MODEL,
            prompt="count slowly",
            stream=True,
            partial_images=3,
            extra_headers=_length(max_tokens),
        )

    def text(self, chunk: Any) -> str | None:
        from streamguard.testing import image_text

        return image_text(chunk.b64_json) if chunk.type.endswith(".partial_image") else None


class OpenAIRunsAdapter(_OpenAIEntryPoint):
    """``beta.threads.runs.create(stream=True)``: an Assistants run is a server-side object
    that goes on when its stream's connection closes, so a cut prevents nothing."""

    name = "openai.runs"
    requires = "openai.types.beta:AssistantStreamEvent"
    operation = "invoke_agent"
    prevents = False

    def open(self, client: Any, max_tokens: int) -> Any:
        with warnings.catch_warnings():  # the SDK marks the Assistants API deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            return client.beta.threads.runs.create(
                "thread_conformance",
                assistant_id="asst_conformance",
                model=MODEL,
                additional_messages=MESSAGES,
                max_completion_tokens=max_tokens,
                stream=True,
            )

    def text(self, chunk: Any) -> str | None:
        if chunk.event != "thread.message.delta":
            return None
        return "".join(block.text.value for block in chunk.data.delta.content or ())


class OpenAIAgentSessionsAdapter(_OpenAIEntryPoint):
    """``beta.agents.sessions.create(stream=True)``: the SDK's ``AgentSessionEventStream`` (a
    ``Stream`` subclass); the model is named inside ``agent``; the session goes on without the
    connection (a cut prevents nothing)."""

    name = "openai.agents.sessions"
    requires = "openai.resources.beta.agents:Sessions"
    operation = "invoke_agent"
    sends_max_tokens = False
    prevents = False

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.beta.agents.sessions.create(
            environment={"type": "none"},
            agent={"model": MODEL, "instructions": "count"},
            input="slowly",
            stream=True,
            extra_headers=_length(max_tokens),
        )

    def text(self, chunk: Any) -> str | None:
        return chunk.delta if chunk.type == "agent.session.turn.output_text.delta" else None


# The other openai entry points (test_entry_points.py): the same guard, other request shapes.
# ``helper`` adapters open the SDK's stream manager; the test enters it for its handler.


class OpenAIAgentSessionEventsAdapter(OpenAIAgentSessionsAdapter):
    """``beta.agents.sessions.events.stream(id)``: a GET naming no model (the session's
    ``agent.session.created`` event does)."""

    name = "openai.agents.sessions.events"
    receipt_model = "upstream-agent"

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.beta.agents.sessions.events.stream(
            "asess_conformance", extra_headers=_length(max_tokens)
        )


class OpenAIImageEditAdapter(OpenAIImagesAdapter):
    name = "openai.images.edit"
    requires = "openai.types:ImageEditStreamEvent"
    operation = "image_edit"

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.images.edit(
            model=MODEL,
            image=("cat.png", b"\x89PNG\r\n\x1a\n", "image/png"),
            prompt="count slowly",
            stream=True,
            extra_headers=_length(max_tokens),
        )


def _assistants(call: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():  # the SDK marks the Assistants API deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return call(*args, **kwargs)


_RUN = {"assistant_id": "asst_conformance", "model": MODEL, "additional_messages": MESSAGES}


class OpenAIRunStreamAdapter(OpenAIRunsAdapter):
    name = "openai.runs.stream"
    helper = True

    def open(self, client: Any, max_tokens: int) -> Any:
        runs = client.beta.threads.runs
        return _assistants(
            runs.stream, thread_id="thread_conformance", max_completion_tokens=max_tokens, **_RUN
        )


class OpenAIRunCreateAndStreamAdapter(OpenAIRunsAdapter):
    name = "openai.runs.create_and_stream"
    helper = True

    def open(self, client: Any, max_tokens: int) -> Any:
        runs = client.beta.threads.runs
        return _assistants(
            runs.create_and_stream,
            thread_id="thread_conformance",
            max_completion_tokens=max_tokens,
            **_RUN,
        )


_NEW_THREAD = {
    "assistant_id": "asst_conformance",
    "model": MODEL,
    "thread": {"messages": MESSAGES},
}


class OpenAICreateAndRunAdapter(OpenAIRunsAdapter):
    name = "openai.threads.create_and_run"

    def open(self, client: Any, max_tokens: int) -> Any:
        threads = client.beta.threads
        return _assistants(
            threads.create_and_run, stream=True, max_completion_tokens=max_tokens, **_NEW_THREAD
        )


class OpenAICreateAndRunStreamAdapter(OpenAIRunsAdapter):
    name = "openai.threads.create_and_run_stream"
    helper = True

    def open(self, client: Any, max_tokens: int) -> Any:
        threads = client.beta.threads
        return _assistants(
            threads.create_and_run_stream, max_completion_tokens=max_tokens, **_NEW_THREAD
        )


class OpenAISubmitToolOutputsAdapter(OpenAIRunsAdapter):
    """``submit_tool_outputs`` names no model and no limit: the run reports its model."""

    name = "openai.runs.submit_tool_outputs"
    sends_max_tokens = False
    receipt_model = "upstream-assistant"

    def open(self, client: Any, max_tokens: int) -> Any:
        return _assistants(
            client.beta.threads.runs.submit_tool_outputs,
            "run_conformance",
            thread_id="thread_conformance",
            tool_outputs=[{"tool_call_id": "call_1", "output": "42"}],
            stream=True,
            extra_headers=_length(max_tokens),
        )


class OpenAISubmitToolOutputsStreamAdapter(OpenAISubmitToolOutputsAdapter):
    name = "openai.runs.submit_tool_outputs_stream"
    helper = True

    def open(self, client: Any, max_tokens: int) -> Any:
        return _assistants(
            client.beta.threads.runs.submit_tool_outputs_stream,
            run_id="run_conformance",
            thread_id="thread_conformance",
            tool_outputs=[{"tool_call_id": "call_1", "output": "42"}],
            extra_headers=_length(max_tokens),
        )


class OpenAIBetaResponsesAdapter(_OpenAIEntryPoint):
    name = "openai.beta.responses"
    requires = "openai.resources.beta.responses:Responses"

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.beta.responses.create(
            model=MODEL, input="count slowly", max_output_tokens=max_tokens, stream=True
        )

    def text(self, chunk: Any) -> str | None:
        return chunk.delta if chunk.type == "response.output_text.delta" else None


class OpenAIResponsesRetrieveAdapter(OpenAIBetaResponsesAdapter):
    """``responses.retrieve(id, stream=True)``: a stored response, no model or limit named."""

    name = "openai.responses.retrieve"
    requires = "openai.types.responses:ResponseStreamEvent"
    sends_max_tokens = False
    receipt_model = "upstream-stored-model"

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.responses.retrieve(
            "resp_conformance", stream=True, extra_headers=_length(max_tokens)
        )


class OpenAIBetaResponsesRetrieveAdapter(OpenAIResponsesRetrieveAdapter):
    name = "openai.beta.responses.retrieve"
    requires = "openai.resources.beta.responses:Responses"

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.beta.responses.retrieve(
            "resp_conformance", stream=True, extra_headers=_length(max_tokens)
        )


# --------------------------------------- anthropic managed-agent session events (h15e)


class AnthropicSessionEventsAdapter(AnthropicAdapter):
    """``beta.sessions.events.stream(event_deltas=["agent.message"])``: a GET that names no
    model and no limit; the session goes on without the connection (a cut prevents nothing)."""

    name = "anthropic.sessions"
    requires = "anthropic.resources.beta.sessions:Sessions"
    provider = "anthropic"
    operation = "invoke_agent"
    receipt_model = None
    sends_max_tokens = False
    prevents = False
    input_known_when_cut = False  # the usage comes with span.model_request_end

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.beta.sessions.events.stream(
            "sesn_conformance", event_deltas=["agent.message"], extra_headers=_length(max_tokens)
        )

    def text(self, chunk: Any) -> str | None:
        return chunk.delta.content.text if chunk.type == "event_delta" else None


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        OpenAIAdapter(),
        AnthropicAdapter(),
        OllamaAdapter(),
        GeminiAdapter(),
        MistralAdapter(),
        # h15e: the entry points beyond chat (their own block above)
        OpenAITranscriptionsAdapter(),
        OpenAIImagesAdapter(),
        OpenAIRunsAdapter(),
        OpenAIAgentSessionsAdapter(),
        AnthropicSessionEventsAdapter(),
    )
}


class AnthropicSessionThreadEventsAdapter(AnthropicSessionEventsAdapter):
    name = "anthropic.sessions.threads"
    requires = "anthropic.resources.beta.sessions:Threads"

    def open(self, client: Any, max_tokens: int) -> Any:
        return client.beta.sessions.threads.events.stream(
            "sthr_conformance",
            session_id="sesn_conformance",
            event_deltas=["agent.message"],
            extra_headers=_length(max_tokens),
        )


class AnthropicBedrockSessionEventsAdapter(AnthropicSessionEventsAdapter):
    """anthropic 2.17 generates ``resources.beta.bedrock`` but no client exposes it yet: the
    resource is built on the client, as a client that exposes it would."""

    name = "anthropic.bedrock.sessions"
    requires = "anthropic.resources.beta.bedrock:Bedrock"

    def open(self, client: Any, max_tokens: int) -> Any:
        from anthropic.resources.beta.bedrock import AsyncBedrock, Bedrock

        resource = AsyncBedrock(client) if self.is_async_client(client) else Bedrock(client)
        return resource.sessions.events.stream(
            "sesn_conformance", event_deltas=["agent.message"], extra_headers=_length(max_tokens)
        )

    def is_async_client(self, client: Any) -> bool:
        return isinstance(client, self.sdk().AsyncAnthropic)


#: Entry points checked by test_entry_points.py (the conformance suite's scenarios that tell
#: one request shape from another: exhaust, close, break and drop or leave the helper).
ENTRY_POINTS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        OpenAIImageEditAdapter(),
        OpenAIAgentSessionEventsAdapter(),
        OpenAIRunStreamAdapter(),
        OpenAIRunCreateAndStreamAdapter(),
        OpenAICreateAndRunAdapter(),
        OpenAICreateAndRunStreamAdapter(),
        OpenAISubmitToolOutputsAdapter(),
        OpenAISubmitToolOutputsStreamAdapter(),
        OpenAIBetaResponsesAdapter(),
        OpenAIResponsesRetrieveAdapter(),
        OpenAIBetaResponsesRetrieveAdapter(),
        AnthropicSessionThreadEventsAdapter(),
        AnthropicBedrockSessionEventsAdapter(),
    )
}
