"""Jobs defined in a script run as ``__main__``: named so workers find them, or refused.

The scripts run in real `python` processes, as an application's would, and
enqueue to a real node that imports them by module name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testjobs import ends

from roger import Node
from tests.helpers import wait_for
from tests.roger.support import child_env, queue_depth

SCRIPT = '''
import sys

import roger
from testjobs import record


class Hello(roger.Job):
    def perform(self, args):
        record(args["out"], event="end", id=self.id, name=self.name)


if __name__ == "__main__":
    job = Hello.create({"out": sys.argv[2]}).enqueue(sys.argv[1])
    print(job.name, job.id)
'''


def run_python(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], env=child_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("files", "argv", "name"), [
    ({"hello_jobs.py": SCRIPT}, ["scripts/hello_jobs.py"], "hello_jobs:Hello"),
    ({"shop/__init__.py": "", "shop/hello.py": SCRIPT}, ["-m", "shop.hello"],
     "shop.hello:Hello"),
], ids=["python script.py", "python -m package.module"])
def test_a_script_run_as_main_enqueues_jobs_a_node_runs(partition, make_settings, out, tmp_path,
                                                        monkeypatch, files, argv, name):
    scripts = tmp_path / "scripts"
    for path, text in files.items():
        (scripts / path).parent.mkdir(parents=True, exist_ok=True)
        (scripts / path).write_text(text)
    monkeypatch.syspath_prepend(str(scripts))  # the node (forked from here) imports it
    module = name.partition(":")[0]
    settings = make_settings(partitions={partition: {"default": 1}},
                             imports=["testjobs", module])
    with Node(settings):
        done = run_python(*argv, partition, out, cwd=tmp_path if argv[0] != "-m" else scripts)
        assert done.returncode == 0, done.stderr
        wire_name, job_id = done.stdout.split()
        wait_for(lambda: ends(out), what="the script's job")
    assert wire_name == name
    assert ends(out) == [{"event": "end", "id": job_id, "name": name}]
    assert queue_depth(f"{partition}-default.rejected") == 0


@pytest.mark.parametrize("how", ["python my-jobs.py", "python -c", "python - < script"])
def test_a_main_module_no_worker_could_import_is_refused_at_enqueue(partition, out, tmp_path,
                                                                     how):
    (tmp_path / "my-jobs.py").write_text(SCRIPT)
    if how == "python my-jobs.py":
        done = run_python("my-jobs.py", partition, out, cwd=tmp_path)
    elif how == "python -c":
        done = run_python("-c", SCRIPT, partition, out, cwd=tmp_path)
    else:
        done = subprocess.run([sys.executable, "-", partition, out], input=SCRIPT,
                              env=child_env(), cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("TypeError: cannot enqueue Hello: it is defined in the program's "
                            "main module")
    assert "set its `name` class attribute" in error
    assert done.stdout == ""  # refused before anything was published
