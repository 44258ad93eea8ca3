"""Tables the docs build from data files at build time, so no number is copied by hand.

``{peers-table}``: the edge-case comparison against optax, scipy, TFP and PyTorch, read
from docs/peers.json (written by scripts/peers.py).
``{kl-estimators-table}``: the measured Schulman table, read from
docs/results/kl_estimators.json (written by experiments/kl_estimators.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parents[1]

# Columns of the peers table, in order; any other key of a row goes to "other".
PEER_COLUMNS = [
  ("jaxdiv", "jaxdiv"),
  ("optax", "optax"),
  ("scipy", "scipy"),
  ("tfp", "TFP"),
  ("torch", "PyTorch"),
]
PEER_EXTRA = {
  "blog_numpy": "the blog's clipped NumPy",
  "torch_batchmean": "PyTorch batchmean",
  "scipy_jensenshannon": "scipy jensenshannon",
  "scipy_entr": "scipy.special.entr",
}


def _table(
  header: list[str], rows: list[list[str]], widths: list[int], literal: set[int]
) -> nodes.table:
  """A docutils table; the cells of the columns in ``literal`` are set as code."""
  table = nodes.table(classes=["generated-table"])
  group = nodes.tgroup(cols=len(header))
  table += group
  for w in widths:
    group += nodes.colspec(colwidth=w)

  def row(cells, code_columns):
    r = nodes.row()
    for i, c in enumerate(cells):
      para = nodes.paragraph()
      code = i in code_columns and c not in ("", "—")
      para += nodes.literal(text=c) if code else nodes.Text(c)
      entry = nodes.entry()
      entry += para
      r += entry
    return r

  head = nodes.thead()
  head += row(header, set())
  group += head
  body = nodes.tbody()
  for cells in rows:
    body += row(cells, literal)
  group += body
  return table


class PeersTable(SphinxDirective):
  has_content = False

  def run(self):
    path = DOCS / "peers.json"
    self.env.note_dependency(str(path))
    rows = json.loads(path.read_text())
    out = []
    for r in rows:
      cells = [r["case"]] + [r.get(k, "—") for k, _ in PEER_COLUMNS]
      extra = [f"{PEER_EXTRA.get(k, k)}: {v}" for k, v in sorted(r.items()) if k in PEER_EXTRA]
      unknown = set(r) - set(PEER_EXTRA) - {k for k, _ in PEER_COLUMNS} - {"case"}
      if unknown:
        raise self.error(f"docs/peers.json has columns the table does not know: {unknown}")
      cells.append("; ".join(extra) if extra else "—")
      out.append(cells)
    header = ["edge case"] + [name for _, name in PEER_COLUMNS] + ["other"]
    return [_table(header, out, [30, 12, 12, 10, 8, 12, 16], literal={1, 2, 3, 4, 5})]


class KLEstimatorsTable(SphinxDirective):
  has_content = False

  def run(self):
    path = DOCS / "results" / "kl_estimators.json"
    self.env.note_dependency(str(path))
    res = json.loads(path.read_text())
    out = []
    for _, setting in sorted(res["settings"].items(), key=lambda kv: kv[1]["true_kl"]):
      for name, est in sorted(setting["estimators"].items()):
        m, x, pub = est["measured"], est["exact"], est["published_text"]
        out.append(
          [
            f"{setting['true_kl']:.3g}",
            name,
            pub["bias_over_true"],
            f"{x['bias_over_true']:.4f}",
            f"{m['bias_over_true']:.4f} ± {m['bias_over_true_se']:.4f}",
            pub["stdev_over_true"],
            f"{x['stdev_over_true']:.4f}",
            f"{m['stdev_over_true']:.4f} ± {m['stdev_over_true_se']:.4f}",
          ]
        )
    header = [
      "true KL",
      "estimator",
      "bias/true: published",
      "exact",
      "measured",
      "stdev/true: published",
      "exact",
      "measured",
    ]
    return [_table(header, out, [8, 8, 10, 10, 18, 10, 10, 18], literal=set())]


def setup(app):
  app.add_directive("peers-table", PeersTable)
  app.add_directive("kl-estimators-table", KLEstimatorsTable)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
