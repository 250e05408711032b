"""The LangChain, LlamaIndex, DSPy and AutoGen integrations are wired by ``instrument()`` when the
application imports the framework, and ``uninstrument()`` removes only their own layers."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import wrapt

import streamguard
from streamguard.integrations.autogen import AutoGenPatcher
from streamguard.integrations.dspy import DSPyPatcher
from streamguard.integrations.langchain import LangChainPatcher
from streamguard.integrations.llamaindex import LlamaIndexPatcher
from streamguard.testing import InMemoryReceiptSink
from streamguard.testing.instrumenting import instrument_for_test


def _attrs(patcher: Any) -> list[tuple[Any, str]]:
    out = []
    for module_name, path, _wrapper in patcher.targets():
        owner_name, _, attr = path.rpartition(".")
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:  # a module the installed release does not have
            continue
        for part in owner_name.split(".") if owner_name else ():
            owner = getattr(owner, part, None)
        if owner is not None and attr in vars(owner):
            out.append((owner, attr))
    return out


@pytest.mark.parametrize(
    "patcher", [LangChainPatcher, LlamaIndexPatcher, DSPyPatcher, AutoGenPatcher]
)
def test_uninstrument_removes_only_streamguards_layer(patcher: type) -> None:
    pytest.importorskip(patcher.module)
    attrs = _attrs(patcher())
    assert attrs
    originals = [vars(owner)[attr] for owner, attr in attrs]
    calls: list[str] = []

    def foreign(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("foreign")
        return wrapped(*args, **kwargs)

    instrument_for_test(InMemoryReceiptSink())
    try:
        for (owner, attr), original in zip(attrs, originals, strict=True):
            ours = vars(owner)[attr]
            assert isinstance(ours, wrapt.FunctionWrapper) and ours.__wrapped__ is original
            wrapt.wrap_function_wrapper(owner, attr, foreign)  # another tool, after StreamGuard
    finally:
        streamguard.uninstrument()
    try:
        for (owner, attr), original in zip(attrs, originals, strict=True):
            theirs = vars(owner)[attr]
            assert isinstance(theirs, wrapt.FunctionWrapper), (owner, attr)
            assert theirs.__wrapped__ is original, (owner, attr)  # StreamGuard's layer is gone
    finally:
        for (owner, attr), original in zip(attrs, originals, strict=True):
            setattr(owner, attr, original)


def test_instrument_patches_the_frameworks_only_when_the_app_imports_them() -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    code = textwrap.dedent(
        """
        import sys, wrapt, streamguard
        from streamguard.testing import InMemoryReceiptSink
        from streamguard.testing.instrumenting import instrument_for_test
        instrument_for_test(InMemoryReceiptSink())
        assert "langchain_core" not in sys.modules and "llama_index.core" not in sys.modules
        from langchain_core.runnables.base import Runnable
        from llama_index.core.chat_engine.simple import SimpleChatEngine
        attrs = ((Runnable, "astream_events"), (SimpleChatEngine, "stream_chat"))
        ours = [vars(owner)[attr] for owner, attr in attrs]
        for layer in ours:
            assert isinstance(layer, wrapt.FunctionWrapper), layer
        streamguard.uninstrument()
        for (owner, attr), layer in zip(attrs, ours):
            assert vars(owner)[attr] is layer.__wrapped__, (owner, attr)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
