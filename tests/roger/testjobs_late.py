"""A job module the rejected-replay test deploys late: the first node it starts lacks it.

Nothing else may import this module: a node started from a test process that
had imported it would know the class from the start.
"""

from __future__ import annotations

from testjobs import Record


class Late(Record):
    """`testjobs.Record` under a name only nodes that import this module know."""
