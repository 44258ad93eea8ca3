"""The package as `pip install` delivers it: sdist and wheel build, the wheel holds only
`jaxdiv`, `twine check` passes, and the wheel installed into a fresh virtual environment
with nothing but jax imports and passes its docstring examples.

Slow (a build in an isolated environment and a fresh venv with jax): run by `.ci/run`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# Runs inside the fresh venv, outside the checkout: every module's docstring examples
# with the namespace the docs promise (tests run them through pytest and conftest.py).
DOCTESTS = r"""
import doctest, importlib, pkgutil, sys
import jax, jax.numpy as jnp, numpy as np
import jaxdiv
assert "site-packages" in jaxdiv.__file__, jaxdiv.__file__
failed = attempted = 0
for info in pkgutil.walk_packages(jaxdiv.__path__, "jaxdiv."):
  mod = importlib.import_module(info.name)
  r = doctest.testmod(
    mod, extraglobs={"jax": jax, "jnp": jnp, "np": np, "jaxdiv": jaxdiv},
    optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
  )
  failed += r.failed
  attempted += r.attempted
print(jaxdiv.__version__, attempted, failed)
sys.exit(1 if failed or attempted == 0 else 0)
"""


def _run(*cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
  assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
  """Build from a copy of the checkout's files (as a fresh clone has them), so that the
  build neither sees ignored files nor writes into the checkout while other tests run."""
  src = tmp_path_factory.mktemp("src")
  listed = _run(
    "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT
  ).stdout.split("\0")
  for name in filter(None, listed):
    if (ROOT / name).is_file():
      (src / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, src / name)
  out = tmp_path_factory.mktemp("dist")
  _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(src))
  return out


def _version() -> str:
  for line in (ROOT / "jaxdiv" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
      return line.split("=")[1].strip().strip("\"'")
  raise AssertionError("no __version__ in jaxdiv/__init__.py")


def test_wheel_holds_only_jaxdiv(dist):
  (wheel,) = dist.glob("*.whl")
  version = _version()
  assert wheel.name.startswith(f"jaxdiv-{version}-py3-none-any")
  names = zipfile.ZipFile(wheel).namelist()
  info = f"jaxdiv-{version}.dist-info/"
  assert all(n.startswith(("jaxdiv/", info)) for n in names), sorted(
    n for n in names if not n.startswith(("jaxdiv/", info))
  )
  assert {"jaxdiv/__init__.py", "jaxdiv/py.typed", "jaxdiv/generators.py"} <= set(names)
  assert f"{info}licenses/LICENSE" in names
  assert not any(n.endswith("conftest.py") or "/tests/" in n for n in names)
  metadata = zipfile.ZipFile(wheel).read(f"{info}METADATA").decode()
  assert f"Version: {version}" in metadata
  assert "Requires-Dist: jax>=" in metadata
  requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
  assert all("extra ==" in r for r in requires if "jax>=" not in r), requires
  for url in ("Documentation", "Source", "Changelog"):
    assert f"Project-URL: {url}, https://" in metadata
  assert "License-Expression: Apache-2.0" in metadata


def test_sdist_has_license_and_changelog(dist):
  (sdist,) = dist.glob("*.tar.gz")
  names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
  assert {"LICENSE", "README.md", "pyproject.toml", "jaxdiv/__init__.py"} <= names


def test_twine_check(dist):
  _run(sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir()))


def test_installed_wheel_imports_and_passes_its_doctests(dist, tmp_path):
  (wheel,) = dist.glob("*.whl")
  venv = tmp_path / "venv"
  _run(sys.executable, "-m", "venv", str(venv))
  py = venv / "bin" / "python"
  _run(str(py), "-m", "pip", "install", "--quiet", str(wheel))
  freeze = _run(str(py), "-m", "pip", "freeze").stdout.lower().splitlines()
  installed = {line.split("==")[0].split(" @ ")[0] for line in freeze if line[:1].isalpha()}
  assert {"jax", "jaxlib", "jaxdiv"} <= installed
  # jax itself brings numpy, scipy, ml_dtypes and opt_einsum; nothing of jaxdiv's extras.
  assert not installed & {"optax", "matplotlib", "pytest", "chex", "scikit-learn"}, installed
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA_FLAGS"))}
  env["JAX_PLATFORMS"] = "cpu"
  proc = _run(str(py), "-c", DOCTESTS, cwd=tmp_path, env=env)
  version, attempted, failed = proc.stdout.split()
  assert version == _version() and int(attempted) > 0 and int(failed) == 0
  no_experiments = subprocess.run(
    [str(py), "-c", "import experiments"], cwd=tmp_path, env=env, capture_output=True
  )
  assert no_experiments.returncode != 0
