"""Telemetry: spans, metrics and log records; the only package that names OTel instruments.

Floor: ``_telemetry``, beside ``_money`` (neither imports the other), above ``_receipts``. It
does not import the engine: it reads a stream through the ``otel.StreamFacts`` protocol and
its sealed receipt. It depends on the OTel API only; ``setup.configure_otel`` brings the SDK
from the ``otlp`` extra.
"""
