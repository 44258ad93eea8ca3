"""scripts/setup.sh sets up .venv and nothing else; sourcing the scripts leaves the shell alone.

Hermetic: the scripts are copied into a temporary repository whose ``python3`` is a stub
that records what it is asked to do (no network, no real install).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/usr/bin/env bash
# A stand-in for python3 and .venv/bin/python: log the call, create the venv on `-m venv`.
echo "$*" >> "$LOG"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && chmod +x "$3/bin/python"
fi
if [ "$1" = "-c" ]; then exit 1; fi  # "import jaxdiv, optax, pytest" fails: not installed yet
exit 0
"""


@pytest.fixture
def fake_repo(tmp_path):
  if shutil.which("bash") is None:
    pytest.skip("needs bash")
  repo = tmp_path / "repo"
  (repo / "scripts").mkdir(parents=True)
  for name in ("_setup.sh", "setup.sh"):
    shutil.copy2(ROOT / "scripts" / name, repo / "scripts" / name)
  (repo / "pyproject.toml").write_text("[project]\nname = 'jaxdiv'\n")
  stub = tmp_path / "python3"
  stub.write_text(STUB)
  stub.chmod(0o755)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  return repo, stub, elsewhere, tmp_path / "calls.log"


def _bash(script, stub, log, cwd, interactive=False):
  env = {"PATH": "/usr/bin:/bin", "PYTHON": str(stub), "LOG": str(log), "HOME": str(cwd)}
  flags = ["-i"] if interactive else []
  return subprocess.run(
    ["bash", "--norc", "--noprofile", *flags, "-c", script],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )


def test_setup_sh_creates_the_venv_installs_the_extras_and_runs_nothing_else(fake_repo):
  repo, stub, elsewhere, log = fake_repo
  r = _bash(f"{repo}/scripts/setup.sh", stub, log, elsewhere)
  assert r.returncode == 0, r.stderr
  calls = log.read_text()
  assert "-m venv .venv" in calls
  assert "-m pip install --quiet -e .[test,experiments]" in calls
  assert "-m pytest" not in calls
  assert "source " in r.stdout and ".venv/bin/activate" in r.stdout
  assert (repo / ".venv" / ".jaxdiv-installed").exists()


SHOW = "echo rc=$? pwd=$PWD; set -o | grep -E '^(errexit|nounset|pipefail)'"


def _options_off(stdout):
  for option in ("errexit", "nounset", "pipefail"):
    line = next(x for x in stdout.splitlines() if x.startswith(option))
    assert line.split()[-1] == "off", line


def test_sourcing_setup_sh_leaves_the_shell_as_it_was(fake_repo):
  repo, stub, elsewhere, log = fake_repo
  r = _bash(f"source {repo}/scripts/setup.sh; {SHOW}", stub, log, elsewhere, interactive=True)
  assert f"rc=0 pwd={elsewhere}" in r.stdout, r.stdout + r.stderr
  _options_off(r.stdout)
  assert (repo / ".venv" / "bin" / "python").exists()


def test_sourcing_the_internal_script_interactively_refuses_and_changes_nothing(fake_repo):
  repo, stub, elsewhere, log = fake_repo
  r = _bash(f"source {repo}/scripts/_setup.sh; {SHOW}", stub, log, elsewhere, interactive=True)
  assert f"rc=1 pwd={elsewhere}" in r.stdout, r.stdout + r.stderr
  assert "run ./scripts/setup.sh instead" in r.stderr
  _options_off(r.stdout)
  assert not log.exists()  # nothing was run


def test_the_scripts_that_run_things_still_source_the_internal_setup():
  for name in ("test.sh", "reproduce.sh"):
    text = (ROOT / "scripts" / name).read_text()
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"' in text, name
