"""RabbitMQ under the ledger run's hands: `rabbitmqctl`, and undoing every broker fault."""

from __future__ import annotations

import subprocess

RABBITMQCTL_TIMEOUT = 120.0
WATERMARK_NORMAL = "0.4"


def rabbitmqctl(*args: str, timeout: float = RABBITMQCTL_TIMEOUT) -> str:
    """Run rabbitmqctl; raises RuntimeError with its stderr when it fails."""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def restore_broker() -> list[str]:
    """Undo every broker fault, whatever state it is in; returns what failed."""
    problems = []
    for args in (("start_app",), ("set_vm_memory_high_watermark", WATERMARK_NORMAL),
                 ("await_startup",)):
        try:
            rabbitmqctl(*args)
        except Exception as e:  # keep restoring the rest
            problems.append(str(e))
    return problems
