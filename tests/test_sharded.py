"""Tests for jaxdiv._sharded: vocabulary-parallel losses on 4 simulated CPU devices.

The main test process has already initialised jax with one device, so the checks run in
one subprocess with ``--xla_force_host_platform_device_count=4``. The script runs every
section and prints ``PASS name`` or ``FAIL name`` with the error; each test below asserts
one section, so that a failure names the property that broke.
"""

import subprocess
import sys
import textwrap

import pytest

# multi-device runs in a subprocess: run by .ci/run (`-m slow`), not by ./scripts/test.sh
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
  """
  import os, re, traceback
  # as the suite's conftest: no LLVM optimisation (compile time dominates)
  flags = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
  os.environ["XLA_FLAGS"] = flags
  import jax, jax.numpy as jnp, numpy as np
  jax.config.update("jax_enable_x64", True)
  import jaxdiv
  from jax.sharding import NamedSharding, PartitionSpec as P
  from jaxdiv import sharded_cross_entropy, sharded_kl_divergence
  from jaxdiv import sharded_linear_cross_entropy, sharded_linear_kl_divergence
  from jaxdiv import sharded_linear_jensen_shannon_divergence
  assert jax.device_count() == 4
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((4,), ("vocab",), axis_types=(auto,))
  mesh2 = jax.make_mesh((2, 2), ("data", "vocab"), axis_types=(auto, auto))
  kw = dict(mesh=mesh, axis_name="vocab")
  kw2 = dict(mesh=mesh2, axis_name="vocab", data_axis_name="data")
  rng = np.random.default_rng(0)

  def section(name):
    def run(f):
      try:
        f()
        print("PASS", name, flush=True)
      except Exception:
        print("FAIL", name, traceback.format_exc(), flush=True)
    return run

  def close(a, b, tol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)

  @section("materialised")
  def _():
    N, V = 6, 16
    zp = jnp.asarray(rng.normal(size=(N, V))); zq = jnp.asarray(rng.normal(size=(N, V)))
    lab = jnp.asarray([0, 5, -1, 15, 16, 9])
    wh = jnp.asarray(rng.random((N, V)) > 0.3)
    cases = [
      (lambda a, b: sharded_cross_entropy(labels=lab, q_logits=b, **kw),
       lambda a, b: jaxdiv.cross_entropy(labels=lab, q_logits=b)),
      (lambda a, b: sharded_cross_entropy(labels=lab, q_logits=b, where=wh, **kw),
       lambda a, b: jaxdiv.cross_entropy(labels=lab, q_logits=b, where=wh)),
      (lambda a, b: sharded_cross_entropy(p_logits=a, q_logits=b, **kw),
       lambda a, b: jaxdiv.cross_entropy(p_logits=a, q_logits=b)),
      (lambda a, b: sharded_cross_entropy(jax.nn.softmax(a), q_logits=b, where=wh, **kw),
       lambda a, b: jaxdiv.cross_entropy(jax.nn.softmax(a), q_logits=b, where=wh)),
      (lambda a, b: sharded_kl_divergence(p_logits=a, q_logits=b, where=wh, **kw),
       lambda a, b: jaxdiv.kl_divergence(p_logits=a, q_logits=b, where=wh)),
      (lambda a, b: sharded_kl_divergence(jax.nn.softmax(a), q_logits=b, **kw),
       lambda a, b: jaxdiv.kl_divergence(jax.nn.softmax(a), q_logits=b)),
    ]
    c = jnp.asarray(rng.normal(size=N))

    def value_and_grads(f):
      def loss(a, b):
        v = f(a, b)
        return jnp.nansum(v * c), v

      return jax.value_and_grad(loss, (0, 1), has_aux=True)(zp, zq)[::-1]  # (grads, (_, v))

    # One compiled function for every case, sharded and single-device.
    results = jax.jit(lambda: [[value_and_grads(f) for f in pair] for pair in cases])()
    for (g1, (_, v1)), (g2, (_, v2)) in results:
      assert np.array_equal(np.isnan(v1), np.isnan(v2)), (v1, v2)
      close(v1, v2, 1e-12)
      for x, y in zip(g1, g2):
        close(x, y, 1e-12)
    # value-and-gradient on sharded float32 logits: only all-reduces of per-row scalars
    sh = NamedSharding(mesh, P(None, "vocab"))
    z32 = jax.device_put(jnp.asarray(rng.normal(size=(8, 64)), jnp.float32), sh)
    lab32 = jnp.asarray(rng.integers(0, 64, 8))

    def loss(b):
      kl = sharded_kl_divergence(p_logits=2 * b, q_logits=b, **kw)
      return (kl + sharded_cross_entropy(labels=lab32, q_logits=b, **kw)).sum()

    hlo = jax.jit(jax.value_and_grad(loss)).lower(z32).compile().as_text()
    assert "all-gather" not in hlo and "all-reduce" in hlo
    # on a data x vocabulary mesh with data_axis_name: nothing gathered over either axis,
    # the result sharded like the rows, and equal to the core function
    sh2 = NamedSharding(mesh2, P("data", "vocab"))
    z2 = jax.device_put(jnp.asarray(rng.normal(size=(8, 64)), jnp.float32), sh2)
    lab2 = jax.device_put(lab32, NamedSharding(mesh2, P("data")))

    def per_row(b, y):
      ce = sharded_cross_entropy(labels=y, q_logits=b, **kw2)
      return ce + sharded_kl_divergence(p_logits=2 * b, q_logits=b, **kw2)

    compiled = jax.jit(per_row).lower(z2, lab2).compile()
    for op in ("all-gather", "all-to-all", "collective-permute"):
      assert op not in compiled.as_text(), op
    got = compiled(z2, lab2)
    assert got.sharding.is_equivalent_to(NamedSharding(mesh2, P("data")), 1), got.sharding
    want = jaxdiv.cross_entropy(labels=lab32, q_logits=z2) + jaxdiv.kl_divergence(
      p_logits=2 * z2, q_logits=z2)
    close(got, want, 1e-5)
    g = jax.jit(jax.grad(lambda b: per_row(b, lab2).sum())).lower(z2).compile()
    assert "all-gather" not in g.as_text()

  # -- fused: N rows, hidden widths D (p) and Dq (q), V = 24 (6 columns per device with
  # the vocabulary mesh, 12 with the data x vocabulary mesh); chunk 4 and token chunk 3
  # leave shifted last blocks on every device.
  N, D, Dq, V = 8, 5, 3, 24
  h = jnp.asarray(rng.normal(size=(N, D))); w = jnp.asarray(rng.normal(size=(D, V)))
  hq = jnp.asarray(rng.normal(size=(N, Dq))); wq = jnp.asarray(rng.normal(size=(Dq, V)))
  lab = jnp.asarray([0, 7, -1, 23, 24, 11, 5, 18])  # ignored, out of range (NaN), excluded
  wh = jnp.asarray(np.arange(V) % 5 != 1)  # excludes 11 (a label) and 6, 16, 21, 1
  zp = jnp.asarray(rng.normal(size=(N, V))).at[1, 3].set(-jnp.inf)  # p_3 = 0 in row 1
  zp = zp.at[2].set(-jnp.inf)  # row 2: no possible category (NaN, as on one device)
  c = jnp.asarray(rng.normal(size=N))
  ch = dict(chunk_size=4, token_chunk_size=3)

  def check(cases, tol=1e-11):
    # cases: (sharded, reference, args, mesh, gradient specs or None); values and gradients
    # equal, gradients sharded like the inputs

    def vg(f, args):
      loss = lambda *a: (jnp.nansum(f(*a).reshape(-1) * c), f(*a))
      return jax.value_and_grad(loss, tuple(range(len(args))), has_aux=True)(*args)

    for m in (mesh, mesh2):  # one compiled function per mesh for its cases
      group = [case for case in cases if case[3] is m]
      out = jax.jit(lambda: [(vg(f, a), vg(r, a)) for f, r, a, *_ in group])()
      for (((_, v1), g1), ((_, v2), g2)), (*_, specs) in zip(out, group):
        assert np.array_equal(np.isnan(v1), np.isnan(v2)), (v1, v2)
        close(v1, v2, tol)
        for x, y in zip(g1, g2):
          close(x, y, tol)
        for x, spec in zip(g1, specs or ()):
          assert x.sharding.is_equivalent_to(NamedSharding(m, P(*spec)), x.ndim), (x.sharding, spec)

  def ce_oracle(h, w, lab, T=1.0, cap=None, zl=0.0, eps=0.0, where=None):
    # the options applied to materialised logits, in float64
    z = h @ w
    z = z if cap is None else cap * jnp.tanh(z / cap)
    z = z / T
    keep = jnp.ones(V, bool) if where is None else where
    z = jnp.where(keep, z, -jnp.inf)
    lse = jax.nn.logsumexp(z, axis=-1)
    idx = jnp.clip(lab, 0, V - 1)
    ignored = (lab < 0) | ((lab < V) & ~keep[idx])
    zy = jnp.where(ignored, lse, jnp.take_along_axis(z, idx[:, None], 1)[:, 0])
    mean = jnp.sum(jnp.where(keep, z, 0.0), -1) / jnp.sum(keep)
    loss = (1 - eps) * (lse - zy) + eps * (lse - mean) + zl * lse**2
    loss = jnp.where(ignored, 0.0, loss)
    return jnp.where(lab >= V, jnp.nan, loss)

  @section("fused ce equals the single-device fused loss and the options' oracle")
  def _():
    b = (2, 4)  # batch dimensions are flattened into rows
    opts = dict(temperature=1.7, soft_cap=2.5, z_loss=1e-2, label_smoothing=0.1)
    oracle = dict(T=1.7, cap=2.5, zl=1e-2, eps=0.1)
    check([
      (lambda h, w: sharded_linear_cross_entropy(h, w, lab, **kw, **ch),
       lambda h, w: jaxdiv.linear_cross_entropy(h, w, lab),
       (h, w), mesh, [(None, None), (None, "vocab")]),
      (lambda h, w: sharded_linear_cross_entropy(h, w, lab, where=wh, **kw2, **ch),
       lambda h, w: jaxdiv.linear_cross_entropy(h, w, lab, where=wh),
       (h, w), mesh2, [("data", None), (None, "vocab")]),
      (lambda h, w: sharded_linear_cross_entropy(h, w, lab.reshape(b), **kw2),
       lambda h, w: jaxdiv.linear_cross_entropy(h, w, lab.reshape(b)),
       (h.reshape(*b, D), w), mesh2, None),
      (lambda h, w: sharded_linear_cross_entropy(h, w, lab, where=wh, **opts, **kw2, **ch),
       lambda h, w: jaxdiv.linear_cross_entropy(h, w, lab, where=wh, **opts), (h, w), mesh2, None),
      (lambda h, w: sharded_linear_cross_entropy(h, w, lab, where=wh, **opts, **kw, **ch),
       lambda h, w: ce_oracle(h, w, lab, where=wh, **oracle), (h, w), mesh, None),
      (lambda h, w: sharded_linear_cross_entropy(h, w, lab, label_smoothing=0.3, **kw, **ch),
       lambda h, w: jaxdiv.linear_cross_entropy(h, w, lab, label_smoothing=0.3), (h, w), mesh,
       None),
    ], tol=1e-10)

  @section("fused kl and jsd equal the single-device fused losses and the options' oracle")
  def _():
    kl_head = lambda z: 3.0 * jnp.tanh(z / 3.0) / 0.6
    kl_opts = dict(temperature=0.6, soft_cap=3.0, where=wh)
    js_opts = dict(weight=0.8, temperature=1.5, soft_cap=2.0, where=wh)
    check([
      (lambda *a: sharded_linear_kl_divergence(*a, where=wh, **kw2, **ch),
       lambda *a: jaxdiv.linear_kl_divergence(*a, where=wh),
       (h, w, hq, wq), mesh2, [("data", None), (None, "vocab")] * 2),
      (lambda z, a, b: sharded_linear_kl_divergence(p_logits=z, q_hidden=a, q_weight=b, **kw, **ch),
       lambda z, a, b: jaxdiv.linear_kl_divergence(p_logits=z, q_hidden=a, q_weight=b),
       (zp, hq, wq), mesh, [(None, "vocab"), (None, None), (None, "vocab")]),
      (lambda *a: sharded_linear_kl_divergence(*a, **kl_opts, **kw2, **ch),
       lambda *a: jaxdiv.linear_kl_divergence(*a, **kl_opts), (h, w, hq, wq), mesh2, None),
      (lambda *a: sharded_linear_kl_divergence(*a, **kl_opts, **kw, **ch),
       lambda a, b, c, d: jaxdiv.kl_divergence(
         p_logits=kl_head(a @ b), q_logits=kl_head(c @ d), where=wh),
       (h, w, hq, wq), mesh, None),
      (lambda *a: sharded_linear_jensen_shannon_divergence(*a[:4], weight=a[4], **kw2, **ch),
       lambda *a: jaxdiv.linear_jensen_shannon_divergence(*a[:4], weight=a[4]),
       (h, w, hq, wq, jnp.asarray(0.3)), mesh2, [("data", None), (None, "vocab")] * 2 + [()]),
      (lambda *a: sharded_linear_jensen_shannon_divergence(*a, **js_opts, **kw, **ch),
       lambda *a: jaxdiv.linear_jensen_shannon_divergence(*a, **js_opts), (h, w, hq, wq), mesh,
       None),
    ], tol=1e-10)

  @section("fused losses are exact at a large logit offset")
  def _():
    # float32 logits z + 2^13, exact (steps of 1/8): the loss and gradient must be those of
    # z to float32 round-off of the loss, not of the offset (ulp(2^13) = 2^-10).
    n = 8
    w8 = np.round(rng.normal(size=(n, V)) * 8) / 8
    h32 = jnp.asarray(np.concatenate([np.eye(n), np.ones((n, 1))], 1), jnp.float32)
    w_off = jnp.asarray(np.concatenate([w8, np.full((1, V), 2.0**13)]), jnp.float32)
    w_ref = jnp.asarray(np.concatenate([w8, np.zeros((1, V))]))
    lab8 = jnp.asarray(rng.integers(0, V, n))
    h64 = h32.astype(jnp.float64)
    w2_off, w2_ref = w_off.at[:n].multiply(0.5), w_ref.at[:n].multiply(0.5)
    ce = lambda hh, ww: sharded_linear_cross_entropy(hh, ww, lab8, label_smoothing=0.1, **kw2, **ch)
    oracle = lambda hh, ww: ce_oracle(hh, ww, lab8, eps=0.1)

    @jax.jit
    def both():
      grad = lambda f, hh, ww: jax.grad(lambda x: jnp.sum(c * f(hh, x)))(ww)[:n]
      got = (ce(h32, w_off), grad(ce, h32, w_off),
             sharded_linear_kl_divergence(h32, w_off, h32, w2_off, **kw, **ch),
             sharded_linear_jensen_shannon_divergence(h32, w_off, h32, w2_off, **kw, **ch))
      want = (oracle(h64, w_ref), grad(oracle, h64, w_ref),
              jaxdiv.linear_kl_divergence(h64, w_ref, h64, w2_ref),
              jaxdiv.linear_jensen_shannon_divergence(h64, w_ref, h64, w2_ref))
      return got, want

    for x, y in zip(*both()):
      assert x.dtype == jnp.float32
      close(x, y, 3e-6)

  @section("compiled fused losses exchange only per-row statistics")
  def _():
    # float32, N = 2048 rows (1024 per data shard), D = 32, V = 2048 (1024 per vocabulary
    # shard), blocks of 64 rows x 128 columns: the value and all gradients of the three
    # losses, compiled together; then the same with a quarter of the rows.
    def compiled(n):
      D32, V32, tc = 32, 2048, 64
      put = lambda x, *s: jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh2, P(*s)))
      hh = put(rng.normal(size=(n, D32)), "data", None)
      ww = put(rng.normal(size=(D32, V32)) / 4, None, "vocab")
      ll = jax.device_put(jnp.asarray(rng.integers(0, V32, n)), NamedSharding(mesh2, P("data")))
      o = dict(chunk_size=128, token_chunk_size=tc, **kw2)

      def loss(hh, ww):
        ce = sharded_linear_cross_entropy(hh, ww, ll, label_smoothing=0.1, z_loss=1e-4, **o)
        kl = sharded_linear_kl_divergence(hh, ww, hh, 2 * ww, temperature=2.0, **o)
        js = sharded_linear_jensen_shannon_divergence(hh, ww, hh, 2 * ww, **o)
        return jnp.sum(ce + kl + js)

      return jax.jit(jax.value_and_grad(loss, (0, 1))).lower(hh, ww).compile(), n // 2, tc

    c1, n1, tc = compiled(512)
    c2, n2, _ = compiled(2048)
    hlo = c2.as_text()
    for op in ("all-gather", "all-to-all", "collective-permute", "reduce-scatter"):
      assert op not in hlo, op
    shapes = set()
    for line in hlo.splitlines():
      m = re.search(r"= (.*?) all-reduce(?:-start)?\\(", line)
      if m:
        dims = re.findall(r"\\[([\\d,]*)\\]", m.group(1))
        shapes |= {tuple(int(d) for d in s.split(",") if d) for s in dims}
    # per-row statistics of a block of token-chunk rows (several of them in one flat
    # all-reduce), the hidden-state gradient [rows, D] (summed over the vocabulary), the
    # weight gradient [D, V/2] (summed over the data axis), scalars
    stats = {s for s in shapes if len(s) == 1 and s[0] % tc == 0 and s[0] <= 16 * tc}
    assert shapes - stats <= {(n2, 32), (32, 1024), ()} and stats, shapes
    t1, t2 = c1.memory_analysis().temp_size_in_bytes, c2.memory_analysis().temp_size_in_bytes
    print("memory", n1, t1, n2, t2, flush=True)
    logits = n2 * 1024 * 4  # one float32 logits array of this device's rows and columns
    assert t2 < logits / 2, (t2, logits)
    # Growth with the rows: per-row statistics and [rows, D] hidden-state gradients only;
    # a [rows, V / 2] temporary would add 4096 bytes per row.
    assert (t2 - t1) / (n2 - n1) <= 1024, (t1, t2)

  @section("a stored teacher, reductions and the distillation loss equal one device")
  def _():
    # global indices (each vocabulary shard uses the categories it holds), every tail
    zt = jnp.asarray(rng.normal(size=(N, V)) * 2)
    lp_all = jax.nn.log_softmax(zt)
    lp_k, idx = jax.lax.top_k(lp_all, 5)
    lp_k = lp_k.at[0, -1].set(-jnp.inf)  # a padding slot
    cases = []
    for tail in ("residual", "renormalize", "truncate"):
      st = dict(p_indices=idx, p_log_probs=lp_k, tail=tail)
      cases.append((lambda a, b, st=st: sharded_linear_kl_divergence(
                      q_hidden=a, q_weight=b, **st, **kw2, **ch),
                    lambda a, b, st=st: jaxdiv.linear_kl_divergence(q_hidden=a, q_weight=b, **st),
                    (hq, wq), mesh2, [("data", None), (None, "vocab")]))
    rev = dict(q_indices=idx, q_log_probs=lp_k)
    cases.append((lambda a, b: sharded_linear_jensen_shannon_divergence(
                    p_hidden=a, p_weight=b, **rev, weight=0.3, **kw, **ch),
                  lambda a, b: jaxdiv.linear_jensen_shannon_divergence(
                    p_hidden=a, p_weight=b, **rev, weight=0.3),
                  (hq, wq), mesh, None))
    for red in ("sum", "mean"):
      cases.append((lambda a, b, red=red: sharded_linear_cross_entropy(
                      a, b, lab, reduction=red, **kw2, **ch),
                    lambda a, b, red=red: jaxdiv.linear_cross_entropy(a, b, lab, reduction=red),
                    (h, w), mesh2, None))
      cases.append((lambda a, b, red=red: jaxdiv.sharded_linear_skew_kl_divergence(
                      a, b, hq, wq, alpha=0.2, reduction=red, **kw2, **ch),
                    lambda a, b, red=red: jaxdiv.linear_skew_kl_divergence(
                      a, b, hq, wq, alpha=0.2, reduction=red),
                    (h, w), mesh2, None))
    lab_d = jnp.abs(lab) % V
    cases.append((lambda a, b: jaxdiv.sharded_linear_distillation_loss(
                    a, b, lab_d, teacher_indices=idx, teacher_log_probs=lp_k, divergence="gkd",
                    beta=0.4, hard_weight=0.5, temperature=1.5, reduction="mean", **kw2, **ch),
                  lambda a, b: jaxdiv.linear_distillation_loss(
                    a, b, lab_d, teacher_indices=idx, teacher_log_probs=lp_k, divergence="gkd",
                    beta=0.4, hard_weight=0.5, temperature=1.5, reduction="mean"),
                  (hq, wq), mesh2, None))
    cases.append((lambda a, b: jaxdiv.sharded_linear_total_variation_distance(
                    q_hidden=a, q_weight=b, p_logits=zt, where=wh, **kw, **ch),
                  lambda a, b: jaxdiv.linear_total_variation_distance(
                    q_hidden=a, q_weight=b, p_logits=zt, where=wh),
                  (hq, wq), mesh, None))
    check(cases, tol=1e-10)

  @section("fused losses reject a mesh that does not fit")
  def _():
    import pytest
    with pytest.raises(ValueError, match="divisible by the size 4"):
      sharded_linear_cross_entropy(h, w[:, :22], lab, **kw)
    with pytest.raises(ValueError, match="number of rows 7"):
      sharded_linear_cross_entropy(h[:7], w, lab[:7], **kw2)
    with pytest.raises(ValueError, match="data_axis_name"):
      sharded_linear_kl_divergence(h, w, hq, wq, mesh=mesh, axis_name="vocab", data_axis_name="x")
    with pytest.raises(ValueError, match="label_smoothing"):
      sharded_linear_cross_entropy(h, w, lab, label_smoothing=1.5, **kw)

  @section("fused losses under an Explicit mesh")
  def _():
    explicit = (jax.sharding.AxisType.Explicit,) * 2
    mesh_e = jax.make_mesh((2, 2), ("data", "vocab"), axis_types=explicit)
    lab_e = jnp.abs(lab) % V
    with jax.set_mesh(mesh_e):
      f = lambda a, b: jnp.sum(sharded_linear_cross_entropy(
        a, b, lab_e, mesh=mesh_e, axis_name="vocab", data_axis_name="data"))
      v, g = jax.value_and_grad(f, (0, 1))(h, w)
    want = jnp.sum(jaxdiv.linear_cross_entropy(h, w, lab_e))
    close(v, want, 1e-11)
  """
)

SECTIONS = (
  "materialised",
  "fused ce equals the single-device fused loss and the options' oracle",
  "fused kl and jsd equal the single-device fused losses and the options' oracle",
  "fused losses are exact at a large logit offset",
  "compiled fused losses exchange only per-row statistics",
  "a stored teacher, reductions and the distillation loss equal one device",
  "fused losses reject a mesh that does not fit",
  "fused losses under an Explicit mesh",
)


@pytest.fixture(scope="module")
def report():
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.parametrize("name", SECTIONS)
def test_section(report, name):
  assert f"PASS {name}\n" in report, report[report.find(f"FAIL {name}") :][:4000] or report


def test_a_repeated_eager_call_compiles_nothing(caplog):
  import jax
  import jax.numpy as jnp

  import jaxdiv

  mesh = jax.make_mesh((1, 1), ("data", "vocab"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  kw = dict(mesh=mesh, axis_name="vocab", data_axis_name="data", chunk_size=4)
  h = jax.random.normal(jax.random.key(0), (6, 3), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (3, 10), jnp.float32)
  labels = jnp.array([0, 3, 9, -1, 2, 2])
  calls = (
    lambda: jaxdiv.sharded_linear_cross_entropy(h, w, labels, label_smoothing=0.1, **kw),
    lambda: jax.grad(lambda w: jaxdiv.sharded_linear_kl_divergence(h, w, h, 2 * w, **kw).sum())(w),
  )
  for call in calls:
    jax.block_until_ready(call())
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level("WARNING", logger="jax"):
      for call in calls:
        jax.block_until_ready(call())
  finally:
    jax.config.update("jax_log_compiles", False)
  assert not [r for r in caplog.records if "ompil" in r.getMessage()]


def test_forward_mode_names_what_to_use_instead():
  import jax
  import jax.numpy as jnp

  import jaxdiv

  mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
  h, w, labels = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.array([0, 1])

  def f(w):
    return jaxdiv.sharded_linear_cross_entropy(h, w, labels, mesh=mesh, axis_name="vocab").sum()

  for transform in (lambda: jax.jvp(f, (w,), (w,)), lambda: jax.hessian(f)(w)):
    # the sharded functions on logits are reverse-mode too: the core function is the way
    with pytest.raises(TypeError, match=r"reverse-mode .* jaxdiv\.cross_entropy\(labels="):
      transform()
