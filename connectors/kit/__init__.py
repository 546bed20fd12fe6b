"""The client side every connector builds on: HTTP with classified retries, tokens,
settings, key templates, redaction, path and SQL quoting, streamed answers, and the
shared shapes of sources, targets and asynchronous jobs.

The kit depends on the contract (`connectors.contract`) and on nothing else of ours:
never on a vendor package, never on the emulation side. The engine may use it where
it needs the same rule a connector applies (key templates, redaction, settings types).
"""
