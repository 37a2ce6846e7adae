"""The ledger run (issue 7), as a package: ``python -m benchmarks.chaos``."""

from benchmarks.chaos.runner import FAULT_KINDS, ChaosConfig, run

__all__ = ["FAULT_KINDS", "ChaosConfig", "run"]
