"""The benchmark suite's command line: ``python -m benchmarks [--quick] [BENCHMARK ...]``.

Also runs as ``python benchmarks/run.py``. Prints each benchmark's table as
it finishes and writes them all, with the date, versions and machine, to a
markdown file (``benchmarks/RESULTS.md`` for a full run of everything
without ``--baseline``, ``benchmarks/results-latest.md`` otherwise, so that
a quick, partial or baseline run never overwrites the committed full
results).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import baseline, goals, rabbit, sysinfo  # noqa: E402
from benchmarks.common import HERE, BenchError, Config  # noqa: E402
from benchmarks.report import Section, progress  # noqa: E402

BENCHMARKS = ("throughput", "enqueue", "latency", "scale", "metrics", "mixed")
PROFILE_NOTES = HERE / "PROFILE.md"  # findings, kept by hand from `python -m benchmarks profile`
# The ledger run's section (`python -m benchmarks.chaos`), kept apart: a full
# run rewrites RESULTS.md and must carry it over.
RELIABILITY_NOTES = HERE / "RELIABILITY.md"
# The periodic goals' section (`python -m benchmarks periodic`, not part of all),
# carried over the same way.
PERIODIC_NOTES = HERE / "PERIODIC.md"
DELAYED_NOTES = HERE / "DELAYED.md"  # `python -m benchmarks delayed`, carried over likewise
PROFILE_OUT = HERE / "profile-latest.md"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="roger side by side with Celery, Dramatiq and raw kombu, on one RabbitMQ.")
    parser.add_argument("benchmarks", nargs="*", metavar="BENCHMARK",
                        help=f"which to run: {', '.join(BENCHMARKS)} (default: all); or "
                             "`profile`: sample roger's processes with py-spy during "
                             "throughput (not part of all); `delayed`: delay precision and "
                             "RabbitMQ memory per delayed job (not part of all); `periodic`: the "
                             "periodic jobs goals at full length, ~16 minutes (not part of all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one run of each system: a few minutes in all")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each system (default: 3, quick: 1)")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file to write (default: see above)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the workers' logs and record files (printed path)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also run roger as of git revision REV (a temporary worktree), "
                             "beside today's roger in the same run: each roger system gets a "
                             "twin `... @REV` and a ratio to it (throughput, latency, scale)")
    args = parser.parse_args(argv)
    if args.baseline is not None and "profile" in args.benchmarks:
        parser.error("--baseline does not apply to profile")
    unknown = [b for b in args.benchmarks
               if b not in (*BENCHMARKS, "profile", "delayed", "periodic")]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if "profile" in args.benchmarks:
        return profile(args)
    if "periodic" in args.benchmarks:
        return periodic(args)
    if "delayed" in args.benchmarks:  # minutes of waiting: never part of "all"
        from benchmarks import delayed

        return delayed.main(Config.make(args.quick, args.repeat))
    chosen = list(dict.fromkeys(args.benchmarks)) or list(BENCHMARKS)
    cfg = Config.make(args.quick, args.repeat)
    complete = not args.quick and chosen == list(BENCHMARKS) and args.baseline is None
    output = args.output or HERE / ("RESULTS.md" if complete else "results-latest.md")
    header = sysinfo.describe(cfg.broker_url)
    progress("\n".join(header))
    workdir = tempfile.mkdtemp(prefix="roger-bench-")
    sections: list[Section] = []
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            if args.baseline is not None:
                try:
                    base = stack.enter_context(baseline.checkout(args.baseline))
                except BenchError as e:
                    progress(f"--baseline {args.baseline}: {e}")
                    return 2
                cfg = dataclasses.replace(cfg, baseline=base)
                line = baseline.describe(base)
                header.append(line)
                progress(line)
                if "enqueue" in chosen:
                    progress("note: enqueue gets no baseline rows (it measures the driver's "
                             "publishing, which is today's roger)")
            for name in chosen:
                module = importlib.import_module(f"benchmarks.{name}")
                section = module.run(cfg, workdir)
                sections.append(section)
                print(section.markdown(), flush=True)
            goals_section = goals.table(sections)
            if goals_section is not None:
                sections.append(goals_section)
                print(goals_section.markdown(), flush=True)
    finally:
        with rabbit.suppress_errors():
            left = rabbit.sweep(cfg.broker_url, cfg.name())
            if left:
                progress(f"deleted {left} leftover queues/exchanges")
        if args.keep_logs:
            progress(f"logs and records kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = render(cfg, header, sections, elapsed)
    output.write_text(text)
    progress(f"wrote {os.path.relpath(output)} ({elapsed:.0f} s)")
    # Exit non-zero when a system has no figure at all (every attempt failed).
    return 1 if any(set(s.samples.errors) - set(s.samples.values) for s in sections) else 0


def profile(args: argparse.Namespace) -> int:
    """``python -m benchmarks profile``: py-spy over a node draining the throughput queue."""
    from benchmarks import profile as prof

    cfg = Config.make(args.quick, args.repeat)
    workdir = tempfile.mkdtemp(prefix="roger-bench-")
    parts = []
    try:
        for queue_type in ("quorum", "classic"):
            parts.append(prof.run(cfg, workdir, queue_type))
            print(parts[-1], flush=True)
        parts.append(prof.memory(cfg))
        print(parts[-1], flush=True)
    finally:
        with rabbit.suppress_errors():
            rabbit.sweep(cfg.broker_url, cfg.name())
        if args.keep_logs:
            progress(f"logs and raw py-spy stacks kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    output = args.output or PROFILE_OUT
    output.write_text("\n".join(["# roger profile", "", *sysinfo.describe(cfg.broker_url), "",
                                 *parts]))
    progress(f"wrote {os.path.relpath(output)}")
    return 0


def periodic(args: argparse.Namespace) -> int:
    """``python -m benchmarks periodic``: see `benchmarks.periodic`; writes PERIODIC.md."""
    from benchmarks import periodic as bench

    cfg = Config.make(args.quick, args.repeat)
    workdir = tempfile.mkdtemp(prefix="roger-bench-")
    try:
        text = bench.run(cfg, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(text, flush=True)
    output = args.output or (PERIODIC_NOTES if not args.quick else HERE / "results-latest.md")
    output.write_text(text)
    progress(f"wrote {os.path.relpath(output)}")
    return 0


def render(cfg: Config, header: list[str], sections: list[Section], elapsed: float) -> str:
    mode = "quick" if cfg.quick else "full"
    lines = [
        "# roger benchmarks", "",
        f"Produced by `python -m benchmarks{' --quick' if cfg.quick else ''}` ({mode} mode, "
        f"{cfg.repeat} runs of each system, interleaved; {elapsed / 60:.1f} minutes). "
        "Figures are medians with the (min-max) over the runs; a ratio is taken within each "
        "run (systems of one run are minutes apart at most) and then summarised the same way. "
        "Compare ratios, not absolute figures: the machine is shared and noisy.", "",
        *header, f"- Load average at the end: {sysinfo.load()}", "",
    ]
    text = "\n".join(lines) + "\n" + "\n".join(s.markdown() for s in sections)
    for notes in (PROFILE_NOTES, RELIABILITY_NOTES, DELAYED_NOTES, PERIODIC_NOTES):
        if notes.exists():
            text += "\n" + notes.read_text()
    return text


if __name__ == "__main__":
    sys.exit(main())
