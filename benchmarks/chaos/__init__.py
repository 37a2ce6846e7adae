"""The ledger run: proof that roger loses no job under faults (issue 7).

``python -m benchmarks.chaos --jobs 10000 --duration 300`` publishes N
uniquely numbered jobs, with publisher confirms, into 2 partitions x 2
queues served by 2 nodes (``python -m roger.supervisor`` subprocesses with
their own node name and control socket, one shared state_dir), while a
fault injector strikes at random moments for `duration` seconds. Each job
appends its completion (number, job id, node, pid, attempt, redelivered)
to a per-process file (see `benchmarks.chaos.jobs`), a sink no fault can
take back.

When the faults stop and every confirmed job is accounted for (or a
bounded drain deadline passes), every confirmed job id is classified:

- **done once**;
- **duplicated**: done more than once. At-least-once delivery makes this
  unavoidable when a job finished but its ack never reached RabbitMQ (the
  consumer, its partition, its node, its connection or the broker died in
  between), or when a worker died after the job's work but before its
  outcome, or when a producer re-published a batch whose confirm never came.
  Every extra run is matched to the fault whose time window explains it;
  an extra run no fault explains is a bug, and is reported as such;
- **dead-lettered**: in ``<p>-<q>.buried`` or ``.rejected``, with its reason;
- **still queued** at the deadline (a node failed to recover);
- **lost**: none of the above. Must be 0.

The short form (`ChaosConfig.short`, run by ``tests/roger/test_chaos.py``) injects
each fault kind exactly once, in a fixed order, each on a healthy system.

The broker is always restored (``start_app``, memory watermark 0.4, SIGCONT
for anything stopped) and every process started here is ended, whatever
happens.
"""

# The parts, each importing only those above it:
#   config   fault kinds, ChaosConfig        jobs     LedgerJob, the sink's writer
#   broker   rabbitmqctl, restore_broker     nodes    ChaosNode, process waits
#   ledger   Ledger, Completion              faults   Fault, Target, Injector
#   report   Report (Markdown)               runner   ChaosRun, run
#   __main__ the command line

from benchmarks.chaos.config import FAULT_KINDS, ChaosConfig
from benchmarks.chaos.runner import run

__all__ = ["FAULT_KINDS", "ChaosConfig", "run"]
