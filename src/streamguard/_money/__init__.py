"""Money: token estimates, prices (genai-prices), budgets and their stores, a stream's spend.

Floor: ``_money``, beside ``_telemetry`` (neither imports the other), above ``_engine``: it
reads a core's counters and stops a stream through the engine's API. What it needs of the
process (prices, expected lengths, where to report a store failure) the runtime hands in.
"""
