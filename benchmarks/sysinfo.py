"""Where and with what a run happened: versions, machine, load."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata

from benchmarks import rabbit
from benchmarks.common import ROOT

PACKAGES = ("roger", "kombu", "amqp", "celery", "billiard", "dramatiq", "pika", "multiprocess")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, timeout=10,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "roger", "supervision"],
                               cwd=ROOT, timeout=10, capture_output=True, text=True).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{rev}{' (roger/ or supervision/ modified)' if dirty.strip() else ''}"


def _server_version(url: str) -> str:
    """From the connection's server properties; else from `rabbitmqctl version`.

    The broker is shared: it may be restarting just when the run starts.
    """
    try:
        return rabbit.server_version(url)
    except Exception as e:  # reported, not fatal: the benchmarks will fail loudly anyway
        error = e
    try:
        done = subprocess.run(["rabbitmqctl", "version"], capture_output=True, text=True,
                              timeout=60)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"unknown ({error})"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(url: str) -> list[str]:
    """Markdown lines: date, versions and machine."""
    server = _server_version(url)
    fds = rabbit.file_descriptors()
    if fds:
        server += (f"; its limits: {fds.get('total_limit')} file descriptors, "
                   f"{fds.get('sockets_limit')} sockets")
    cores = len(os.sched_getaffinity(0))
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    return [
        f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- Code: roger commit {_git()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); {versions}",
        f"- RabbitMQ {server} on the same machine ({rabbit.redact(url)})",
        f"- Machine: {cores} cores ({_cpu_model()}), {_mem_total_gib():.1f} GiB memory, "
        f"{platform.system()} {platform.release()}; load average at start {load()}",
    ]
