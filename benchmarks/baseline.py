"""``--baseline REV``: roger as of another git revision, beside today's, in the same run.

`checkout(REV)` adds a detached git worktree of this repository at REV in a
temporary directory, and a directory beside it that holds only symlinks to
that worktree's top-level packages (``roger``, ``supervision``, ...), never
to its ``benchmarks`` or ``tests``. A baseline roger node runs with that
directory first on its ``PYTHONPATH`` (and ``python -P``, so that the
working directory, this repository, does not come first), so ``import
roger`` resolves into the worktree while ``benchmarks.*`` (the jobs, the
node runner) stay today's harness: both sides run the same benchmark code.
The node reports where its packages came from and `check` refuses a run
whose baseline did not import the worktree's.

Only nodes run the baseline's code: the driver enqueues with today's
``roger.enqueue_many``/``Job.enqueue`` into the baseline node's queues
(the wire format, JSON bodies on ``<partition>-<queue>``, is the same).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT, BenchError

HARNESS = {"benchmarks", "tests"}  # top-level packages that stay today's


@dataclass(frozen=True)
class Baseline:
    rev: str  # as given on the command line
    commit: str  # what it resolved to
    tree: Path  # the git worktree at `commit`
    path: Path  # goes first on the node's PYTHONPATH: symlinks to the tree's packages
    packages: tuple[str, ...]  # the packages linked there (roger first)

    @property
    def suffix(self) -> str:
        return f" @{self.rev}"

    def label(self, label: str) -> str:
        """A system's label for its baseline twin: ``roger (quorum)`` -> ``roger (quorum) @REV``."""
        return label + self.suffix

    def env(self) -> dict[str, str]:
        """Environment of a baseline subprocess: the linked packages before this repository."""
        rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {"PYTHONPATH": os.pathsep.join([str(self.path), str(ROOT), *rest]),
                "BENCH_PACKAGES": ",".join(self.packages)}

    def python(self, *args: str) -> list[str]:
        """argv of this interpreter without the working directory on sys.path (``-P``)."""
        return [sys.executable, "-P", *args]

    def check(self, files: dict[str, str], who: str) -> None:
        """Raise unless every linked package in `files` (name -> __file__) is the tree's."""
        tree = self.tree.resolve()
        if "roger" not in files:
            raise BenchError(f"{who} did not report where `roger` came from "
                             f"(expected it under {tree})")
        for name, file in files.items():
            if not Path(file).resolve().is_relative_to(tree):
                raise BenchError(
                    f"{who} imported {name} from {file}, not from the baseline checkout "
                    f"{tree} of {self.rev} ({self.commit[:12]}): the comparison would be "
                    "today's code against itself")


def describe(baseline: Baseline) -> str:
    """The results header's line: what runs beside what."""
    subject = _git("log", "-1", "--format=%s", baseline.commit)
    head = _git("rev-parse", "--short=12", "HEAD")
    changed = _git("status", "--porcelain", "--", ".", ":!benchmarks")
    dirty = " plus uncommitted changes" if changed else ""
    return (f"- Baseline (`--baseline {baseline.rev}`): roger at {baseline.commit[:12]} "
            f"\"{subject}\", in rows `... @{baseline.rev}`, beside today's roger "
            f"({ROOT} at {head}{dirty}); the driver enqueues with today's roger for both")


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout.strip()


def _packages(tree: Path) -> tuple[Path, list[str]]:
    """Where the tree's top-level packages live (flat or src/ layout), and their names."""
    for base in (tree, tree / "src"):
        if (base / "roger" / "__init__.py").is_file():
            names = sorted(p.name for p in base.iterdir()
                           if (p / "__init__.py").is_file() and p.name not in HARNESS)
            return base, ["roger", *(n for n in names if n != "roger")]
    raise BenchError(f"no roger package in {tree} (nor in its src/)")


def _probe(baseline: Baseline) -> dict[str, str]:
    """Import the linked packages in a fresh interpreter set up like a baseline node."""
    code = ("import importlib, json, sys; print(json.dumps({n: importlib.import_module(n)"
            ".__file__ for n in sys.argv[1:]}))")
    done = subprocess.run(baseline.python("-c", code, *baseline.packages), cwd=ROOT,
                          env={**os.environ, **baseline.env()}, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"the baseline {baseline.rev} does not import: "
                         f"{done.stderr.strip()[-600:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def checkout(rev: str) -> Iterator[Baseline]:
    """A worktree of this repository at `rev`, set up for baseline nodes; removed on exit."""
    repo = Path(_git("rev-parse", "--show-toplevel"))
    try:
        commit = _git("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}",
                      cwd=repo)
    except BenchError as e:
        raise BenchError(f"{rev!r} is not a commit of {repo} ({e})") from None
    tmp = Path(tempfile.mkdtemp(prefix="roger-baseline-"))
    tree = tmp / "tree"
    added = False
    try:
        _git("worktree", "add", "--detach", str(tree), commit, cwd=repo)
        added = True
        base, names = _packages(tree)
        path = tmp / "path"
        path.mkdir()
        for name in names:
            (path / name).symlink_to(base / name, target_is_directory=True)
        baseline = Baseline(rev, commit, tree, path, tuple(names))
        baseline.check(_probe(baseline), f"python -P with PYTHONPATH={path}")
        yield baseline
    finally:
        if added or tree.exists():
            try:
                _git("worktree", "remove", "--force", str(tree), cwd=repo)
            except BenchError as e:
                print(f"could not remove the baseline worktree {tree} ({e}); "
                      "`git worktree prune` drops its entry once the directory is gone",
                      file=sys.stderr, flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
