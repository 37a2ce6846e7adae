import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_code_is_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    done = subprocess.run(
        [ruff, "check", "roger", "supervision", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_supervision_never_imports_roger():
    offenders = [
        str(p) for p in (ROOT / "supervision").rglob("*.py")
        if "import roger" in p.read_text() or "from roger" in p.read_text()
    ]
    assert offenders == []
