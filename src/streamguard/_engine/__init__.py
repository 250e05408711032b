"""The engine: one stream's state machine, counters, drivers, hold-back and timers.

Floor: ``_engine``, above ``_receipts`` and the bottom floor (``exceptions``, ``_reasons``,
``_config``, ``_extras``). It knows no SDK, no web framework, no money, no OTel and no
process-wide state: what a stream needs from the process it asks of its host
(``ports.Host``, implemented by ``streamguard._runtime``), faults go to ``ports.report_fault``,
checks (budgets, policies, caps) plug in as callables, and integrations register owner
scopes (``owners``). Everything above may import it; it imports nothing above.
"""
