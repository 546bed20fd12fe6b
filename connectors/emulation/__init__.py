"""The sandbox side: what the emulators and the target contract suite share.

Only vendor packages' `emulator.py` and `sandbox.py`, the sandbox command, tests
and benchmarks import it; a connector's client code and the kit never do, so a
production run loads none of it.
"""
