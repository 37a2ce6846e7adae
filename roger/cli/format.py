"""How the `roger` CLI shows answers: aligned tables for people, JSON for scripts.

Every function takes plain data (dicts as the control socket and
`roger.info` return them, job records) and returns text; nothing here
prints, so the formats are easy to test.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from roger.record import FIELDS


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as ``-``."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [_line(headers, widths)] + [_line(r, widths) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def when(ms: int | None) -> str | None:
    """A ms-since-epoch timestamp as local time, to the second."""
    if ms is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def short(value: Any, width: int = 50) -> str:
    """Compact JSON, cut to `width` characters."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def job_record(job: Any) -> dict[str, Any]:
    """A job record as a JSON-ready dict."""
    record = {"name": job.name} | {f: getattr(job, f, None) for f in FIELDS}
    for extra in ("buried_reason", "buried_error", "rejected_reason", "rejected_error"):
        if getattr(job, extra, None) is not None:
            record[extra] = getattr(job, extra)
    return record


def to_json(obj: Any) -> str:
    """Indented JSON; job records become dicts, paths and the rest strings."""
    def default(value: Any) -> Any:
        if hasattr(value, "perform") and hasattr(value, "id"):
            return job_record(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    return json.dumps(obj, indent=2, default=default)


# --------------------------------------------------------------- node status


def status_text(status: dict) -> str:
    """A node's tree (the control socket's ``status``) as tables."""
    out = [f"node {status.get('node')} (pid {status.get('pid')})"]
    rows = [row for name, part in sorted(status.get("running", {}).items())
            for row in _partition_rows(name, part)]
    if rows:
        out.append(table(("PARTITION", "PID", "QUEUE", "WORKERS", "CONSUMING", "PAUSED",
                          "CONSUMER", "WORKER PIDS", "RUNNING", "RESTARTS"), rows))
    else:
        out.append("no partition running")
    waiting = status.get("waiting") or {}
    if waiting:
        out.append("waiting (retried with backoff): " + ", ".join(
            f"{name} {short(queues)}" for name, queues in sorted(waiting.items())))
    procs = status.get("processes") or {}
    if procs:
        out.append("node processes: " + ", ".join(
            f"{name} pid {p.get('pid')} ({p.get('state')}, restarts {p.get('restarts')})"
            for name, p in sorted(procs.items())))
    return "\n".join(out)


def _partition_rows(name: str, part: dict) -> list[list[Any]]:
    queues = part.get("queues") or {}
    if "error" in queues and not isinstance(queues["error"], dict):
        return [[name, part.get("pid"), f"(no answer: {queues['error']})"]
                + [None] * 7]
    if part.get("restarts"):  # the partition's supervisor itself was restarted
        name = f"{name} (restarted {part['restarts']}x)"
    rows = []
    for qname, q in sorted(queues.items()):
        if "error" in q:
            rows.append([name, part.get("pid"), qname, q.get("max_workers"), None, None,
                         None, None, f"error: {q['error']}", q.get("restarts")])
            continue
        consuming = "idle" if q.get("idle") else q.get("consuming")
        rows.append([name, part.get("pid"), qname, q.get("max_workers"), consuming,
                     q.get("paused"), q.get("pid"), q.get("workers"),
                     len(q.get("running") or []), q.get("restarts")])
    return rows


# ------------------------------------------------------------ cluster info


def partitions_text(info: dict) -> str:
    """`roger.info.partitions()` as one table, a row per node, partition and queue."""
    rows = []
    for node, answer in sorted(info.items()):
        for part, queues in sorted((answer.get("running") or {}).items()):
            for queue, q in sorted(queues.items()):
                rows.append([node, part, queue, "running", q.get("max_workers"),
                             q.get("paused"), q.get("message_count"), q.get("delayed"),
                             q.get("consumer_count")])
        for part, queues in sorted((answer.get("waiting") or {}).items()):
            for queue, workers in sorted(queues.items()):
                rows.append([node, part, queue, "waiting", workers, None, None, None, None])
    if not rows:
        return "no node answered"
    return table(("NODE", "PARTITION", "QUEUE", "STATE", "WORKERS", "PAUSED", "MESSAGES",
                  "DELAYED", "CONSUMERS"), rows)


def running_text(info: dict) -> str:
    """`roger.info.running_jobs()` as a table of jobs."""
    rows = [[node, part, job.id, getattr(job, "name", None), when(job.started_at),
             short(job.args)]
            for node, parts in sorted(info.items())
            for part, jobs in sorted(parts.items()) for job in jobs]
    if not rows:
        return "no job running"
    return table(("NODE", "PARTITION", "JOB ID", "NAME", "STARTED", "ARGS"), rows)


def jobs_text(jobs: Sequence[Any], what: str = "jobs") -> str:
    """Queued or buried job records, oldest first."""
    rows = [[j.id, j.name, j.retry_count, when(j.queued_at), short(j.args)] for j in jobs]
    text = table(("JOB ID", "NAME", "RETRIES", "QUEUED", "ARGS"), rows) if rows else ""
    return f"{text}\n({len(rows)} {what})".lstrip("\n")


def rejected_text(entries: Sequence[Any]) -> str:
    """`roger.info.rejected_jobs()`: job records show their args, other messages their body."""
    rows = [[e.id, getattr(e, "name", None), e.rejected_reason,
             short(e.args) if hasattr(e, "args") else short(e.body),
             None if e.rejected_error is None else short(e.rejected_error, 40)]
            for e in entries]
    text = table(("ID", "NAME", "REASON", "ARGS OR BODY", "ERROR"), rows) if rows else ""
    return f"{text}\n({len(rows)} rejected messages)".lstrip("\n")


def periodic_text(entries: Sequence[Any]) -> str:
    """`roger.info.periodic()`: each entry with its last and next run, in its time zone."""
    def at(value: datetime | None, zone: str) -> str | None:
        if value is None:
            return None
        try:
            from zoneinfo import ZoneInfo

            value = value.astimezone(ZoneInfo(zone))
        except (ValueError, KeyError):  # an unknown zone: show UTC
            pass
        return value.strftime("%Y-%m-%d %H:%M:%S %Z")

    rows = [[e["name"], e["partition"], e["cron"], e["timezone"], e["job"], e["queue"],
             at(e["last_run"], e["timezone"]), at(e["next_run"], e["timezone"])]
            for e in entries]
    if not rows:
        return "no periodic jobs"
    return table(("NAME", "PARTITION", "CRON", "TIMEZONE", "JOB", "QUEUE", "LAST RUN",
                  "NEXT RUN"), rows)
