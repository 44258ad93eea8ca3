"""Shared figure helpers: one style file, deterministic PNG and PDF output."""

from __future__ import annotations

from pathlib import Path

STYLE = Path(__file__).with_name("jaxdiv.mplstyle")


def pyplot():
  """matplotlib.pyplot with the Agg backend and the jaxdiv style applied."""
  import matplotlib

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt

  plt.style.use(str(STYLE))
  return plt


def save(fig, out_dir, name: str, formats=("png", "pdf")) -> list[Path]:
  """Save ``fig`` as ``out_dir/name.{png,pdf}`` with metadata stripped (byte-stable)."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for fmt in formats:
    path = out_dir / f"{name}.{fmt}"
    meta = (
      {"Software": None}
      if fmt == "png"
      else {"Creator": None, "Producer": None, "CreationDate": None}
    )
    fig.savefig(path, format=fmt, metadata=meta)
    paths.append(path)
  import matplotlib.pyplot as plt

  plt.close(fig)
  return paths


def caption(fig, text: str) -> None:
  """A caption under the axes (wrapped to the figure width)."""
  import textwrap

  fig.text(0.01, -0.02, "\n".join(textwrap.wrap(text, 110)), ha="left", va="top", fontsize=8)
