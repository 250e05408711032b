"""Which SDKs run on which event loop, checked without StreamGuard.

The conformance suite runs every async case on each loop of ``STREAMGUARD_TEST_LOOPS``; an SDK
whose async client cannot run on trio at all is skipped there (``Adapter.asyncio_only``). This
test keeps that list honest: on trio, each such SDK must fail without the guard too, so a
release that adds trio support turns this test red until its marker is removed.
"""

from __future__ import annotations

import contextlib

import pytest

from streamguard.testing import Upstream

from . import _loops
from ._adapters import ADAPTERS

ASYNCIO_ONLY = [name for name, adapter in ADAPTERS.items() if adapter.asyncio_only]


@pytest.mark.parametrize("name", ASYNCIO_ONLY)
async def test_asyncio_only_sdks_fail_on_trio_without_streamguard(name: str, up: Upstream) -> None:
    if not _loops.is_trio():
        pytest.skip("checked on trio (STREAMGUARD_TEST_LOOPS=trio)")
    adapter = ADAPTERS[name]
    pytest.importorskip(adapter.module, reason=f"the {name} SDK is not installed")
    client = adapter.client(up, is_async=True)
    try:
        with pytest.raises(RuntimeError):  # asyncio's "no running event loop"
            stream = await adapter.open(client, 5)
            async for _ in stream:
                pass
    finally:
        with contextlib.suppress(RuntimeError):  # closing needs asyncio too
            await adapter.close_client(client, True)
