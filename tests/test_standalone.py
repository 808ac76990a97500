"""The repository stands alone: a clone placed anywhere runs its tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import NIST_DIR

ROOT = Path(__file__).resolve().parents[1]
NIST_NAMES = ["Lew", "Lottery", "Mavro", "Michelso", "NumAcc1", "NumAcc2", "NumAcc3", "NumAcc4",
              "PiDigits"]
# a path to the sibling `shared` folder of the development workspace
ESCAPE = re.compile(r"""\.\.[/\\]shared\b|["']shared["']""")


def test_nist_reference_data_ships_inside_the_repository():
    assert NIST_DIR.resolve().is_relative_to(ROOT)
    for name in NIST_NAMES:
        assert (NIST_DIR / f"{name}.dat").stat().st_size > 0


def test_no_file_reads_outside_the_repository():
    offenders = []
    for folder in ("src", "tests", "benchmarks", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ""} and path.is_file() and path != Path(__file__):
                if ESCAPE.search(path.read_text(errors="replace")):
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_a_copy_placed_elsewhere_passes_the_nist_tests(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "tests", "src"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "deep" / "clone"
    for rel in tracked:
        if (ROOT / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, copy / rel)
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_nist.py", "-k", "NumAcc4 or Lew"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
