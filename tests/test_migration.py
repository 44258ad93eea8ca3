"""Every row of docs/guides/migration.md: a framework's loss, restated from its source, and the
jaxdiv call that gives the same numbers.

Each ``_<framework>_<function>`` helper is a line-by-line port of the framework's torch (or jax)
code to ``jax.numpy`` in float64 (tests/conftest.py turns x64 on), so that ``jax.vjp`` gives the
gradient autograd gives there. Each test compares values and gradients with the jaxdiv call to
~1e-10, and the framework's special cases (GKD's ``beta`` = 0 and 1, clamps that bite, fully
masked sequences) are among the inputs. The sources read, by commit:

- huggingface/trl f2cd57710ae345ea6428ae95363267fcf38a3dc8
- linkedin/Liger-Kernel ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c
- AI-Hypercomputer/maxtext e591f30cbbf217ed67ef71263ec0538239f9c3b8
- volcengine/verl b178a3cd56f58b2d502255daba591e92833930a7
- OpenRLHF/OpenRLHF 3c3be6234e0cb353e76bb8019947db9dfe99fca7
- google-deepmind/optax 2edbcbe2390da13983b92cbef94ac0460ecde1c5
- PyTorch: ``torch.nn.functional.kl_div`` from its documentation (torch is not installed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import xlogy

import jaxdiv

RTOL, ATOL = 1e-10, 1e-12
# verl and OpenRLHF divide a sequence's token sum by (count + 1e-8): 1e-8 / count relative.
RTOL_EPS = 1e-7

N, D, V = 6, 4, 7
LABELS = np.array([1, -100, 3, 0, 6, -100])  # two ignored tokens
MASK = np.array(
  [
    [True, True, True, False, False],
    [False, False, False, False, False],  # a fully masked sequence
    [True, True, True, True, True],
    [True, False, False, False, False],
  ]
)


def _normal(seed, *shape, scale=1.0):
  return scale * np.random.default_rng(seed).normal(size=shape)


def _assert_same(framework, jaxdiv_fn, *args, rtol=RTOL):
  """Values and vector-Jacobian products (in every argument) agree; one compiled program."""
  assert all(np.asarray(a).dtype == np.float64 for a in args)
  cotangent = _normal(99, *jax.eval_shape(framework, *args).shape)

  def both(*args):
    want, want_vjp = jax.vjp(framework, *args)
    got, got_vjp = jax.vjp(jaxdiv_fn, *args)
    return (want, want_vjp(cotangent)), (got, got_vjp(cotangent))

  (want, want_grads), (got, got_grads) = jax.jit(both)(*args)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=ATOL)
  for g, w in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=ATOL)


# --- PyTorch and optax: argument order and reductions ---------------------------------------


def _torch_kl_div(input, target, reduction="mean", log_target=False):
  """``torch.nn.functional.kl_div`` as documented: the model (log-probabilities) first."""
  if log_target:
    loss_pointwise = jnp.exp(target) * (target - input)
  else:
    loss_pointwise = xlogy(target, target) - target * input  # target * (target.log() - input)
  if reduction == "none":
    return loss_pointwise
  if reduction == "mean":  # over every element, categories included
    return loss_pointwise.mean()
  if reduction == "batchmean":  # over the first dimension only
    return loss_pointwise.sum() / input.shape[0]
  return loss_pointwise.sum()


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_torch_kl_div_reductions(reduction):
  """``kl_div(log_softmax(s), softmax(t), reduction)`` on ``[B, T, V]``: "mean" divides by
  B * T * V and "batchmean" by B (sequences, not tokens)."""
  s, t = _normal(1, 2, 3, V), _normal(2, 2, 3, V)
  divisor = {"sum": 1, "mean": 2 * 3 * V, "batchmean": 2}[reduction]
  _assert_same(
    lambda s, t: _torch_kl_div(jax.nn.log_softmax(s), jax.nn.softmax(t), reduction),
    lambda s, t: jaxdiv.kl_divergence(p_logits=t, q_logits=s).sum() / divisor,
    s,
    t,
  )
  if reduction == "sum":  # log_target=True changes the target's form only
    _assert_same(
      lambda s, t: _torch_kl_div(jax.nn.log_softmax(s), jax.nn.log_softmax(t), reduction, True),
      lambda s, t: jaxdiv.kl_divergence(p_logits=t, q_logits=s).sum(),
      s,
      t,
    )


def test_torch_hinton_recipe_batchmean_times_t_squared():
  """``kl_div(log_softmax(s / T), softmax(t / T), "batchmean") * T**2`` on ``[N, V]`` logits
  (Hinton et al.'s T^2; "batchmean" is per token when the batch is flat)."""
  h, w, t = _normal(35, N, D), _normal(36, D, V), _normal(37, N, V, scale=2.0)
  temperature = 2.0
  _assert_same(
    lambda h, w: _torch_kl_div(
      jax.nn.log_softmax(h @ w / temperature), jax.nn.softmax(t / temperature), "batchmean"
    )
    * temperature**2,
    lambda h, w: jaxdiv.linear_distillation_loss(
      h, w, np.zeros(N, int), teacher_logits=t, temperature=temperature,
      scale_by_temperature_squared=True, reduction="mean",
    ),
    h,
    w,
  )  # fmt: skip


def _optax_kl_divergence(log_predictions, targets):
  """google-deepmind/optax, optax/losses/_classification.py: ``kl_divergence``."""
  loss = targets * (jnp.where(targets == 0, 0, jnp.log(targets)) - log_predictions)
  return jnp.sum(loss, axis=-1)


def _optax_kl_divergence_with_log_targets(log_predictions, log_targets):
  """google-deepmind/optax, optax/losses/_classification.py:
  ``kl_divergence_with_log_targets``."""
  loss = jnp.exp(log_targets) * (log_targets - log_predictions)
  return jnp.sum(loss, axis=-1)


def _optax_softmax_cross_entropy(logits, labels):
  """google-deepmind/optax, optax/losses/_classification.py: ``softmax_cross_entropy``."""
  log_probs = jax.nn.log_softmax(logits, -1)
  return -(labels * log_probs).sum(-1)


def _optax_softmax_cross_entropy_with_integer_labels(logits, labels):
  """google-deepmind/optax, optax/losses/_classification.py:
  ``softmax_cross_entropy_with_integer_labels``."""
  label_logits = jnp.take_along_axis(logits, jnp.expand_dims(labels, -1), axis=-1).take(0, axis=-1)
  log_normalizers = jax.nn.logsumexp(logits, axis=-1)
  return log_normalizers - label_logits


def test_optax_kl_divergence_reverses_the_arguments():
  """``optax.losses.kl_divergence(log_softmax(z), p)`` is KL(p‖softmax z): p comes first here."""
  z, p = _normal(3, N, V), jax.nn.softmax(_normal(4, N, V))
  _assert_same(
    lambda z, p: _optax_kl_divergence(jax.nn.log_softmax(z), p),
    lambda z, p: jaxdiv.kl_divergence(p, q_logits=z),
    z,
    p,
  )
  # the literal port keeps the wrong order and a different number
  swapped = jaxdiv.kl_divergence(jax.nn.softmax(z), p)
  assert not np.allclose(swapped, _optax_kl_divergence(jax.nn.log_softmax(z), p), rtol=1e-3)


def test_optax_kl_divergence_with_log_targets():
  zs, zt = _normal(5, N, V), _normal(6, N, V)
  _assert_same(
    lambda zs, zt: _optax_kl_divergence_with_log_targets(
      jax.nn.log_softmax(zs), jax.nn.log_softmax(zt)
    ),
    lambda zs, zt: jaxdiv.kl_divergence(p_logits=zt, q_logits=zs),
    zs,
    zt,
  )


def test_optax_softmax_cross_entropy():
  z, p = _normal(7, N, V), jax.nn.softmax(_normal(8, N, V))
  _assert_same(
    _optax_softmax_cross_entropy,
    lambda z, p: jaxdiv.cross_entropy(p, q_logits=z),
    z,
    p,
  )


def test_optax_softmax_cross_entropy_with_integer_labels():
  """Equal where the label is valid; optax has no ignore index, jaxdiv ignores negative labels."""
  z, y = _normal(9, N, V), np.array([1, 0, 3, 6, 2, 5])
  _assert_same(
    lambda z: _optax_softmax_cross_entropy_with_integer_labels(z, y),
    lambda z: jaxdiv.cross_entropy(labels=y, q_logits=z),
    z,
  )
  assert float(jaxdiv.cross_entropy(labels=jnp.array(-100), q_logits=z[0])) == 0.0


def test_optax_ports_equal_optax():
  """The four optax ports above against optax itself, where it is installed."""
  optax = pytest.importorskip("optax")
  z, zt, y = _normal(10, N, V), _normal(11, N, V), np.array([1, 0, 3, 6, 2, 5])
  lp, p = jax.nn.log_softmax(z), jax.nn.softmax(zt)
  pairs = [
    (optax.losses.kl_divergence(lp, p), _optax_kl_divergence(lp, p)),
    (
      optax.losses.kl_divergence_with_log_targets(lp, jnp.log(p)),
      _optax_kl_divergence_with_log_targets(lp, jnp.log(p)),
    ),
    (optax.losses.softmax_cross_entropy(z, p), _optax_softmax_cross_entropy(z, p)),
    (
      optax.losses.softmax_cross_entropy_with_integer_labels(z, y),
      _optax_softmax_cross_entropy_with_integer_labels(z, y),
    ),
  ]
  for a, b in pairs:
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# --- distillation: TRL GKD, Liger-Kernel, MaxText --------------------------------------------


def _trl_generalized_jsd_loss(
  student_logits, teacher_logits, labels=None, beta=0.5, temperature=1.0, reduction="batchmean"
):
  """huggingface/trl, trl/experimental/gkd/gkd_trainer.py: ``GKDTrainer.generalized_jsd_loss``."""
  student_logits = student_logits / temperature
  teacher_logits = teacher_logits / temperature
  student_log_probs = jax.nn.log_softmax(student_logits, axis=-1)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits, axis=-1)
  if beta == 0:
    jsd = _torch_kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
  elif beta == 1:
    jsd = _torch_kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
  else:
    mixture_log_probs = jax.nn.logsumexp(
      jnp.stack([student_log_probs + jnp.log1p(-beta), teacher_log_probs + jnp.log(beta)]), axis=0
    )
    kl_teacher = _torch_kl_div(mixture_log_probs, teacher_log_probs, "none", log_target=True)
    kl_student = _torch_kl_div(mixture_log_probs, student_log_probs, "none", log_target=True)
    jsd = beta * kl_teacher + (1 - beta) * kl_student
  if labels is not None:
    mask = labels != -100
    jsd = jsd[mask]
  if reduction == "batchmean":
    denom = max(mask.sum(), 1) if labels is not None else max(jsd.shape[0], 1)
    return jsd.sum() / denom
  return jsd.sum()


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_trl_gkd_generalized_jsd_loss(beta):
  """TRL's batchmean with labels: the sum over non-ignored tokens over their count; forward KL
  at beta = 0 and reverse KL at beta = 1 (``divergence="gkd"``)."""
  h, w, t = _normal(12, N, D), _normal(13, D, V), _normal(14, N, V, scale=2.0)
  _assert_same(
    lambda h, w: _trl_generalized_jsd_loss(h @ w, t, LABELS, beta=beta, temperature=2.0),
    lambda h, w: jaxdiv.linear_distillation_loss(
      h, w, LABELS, teacher_logits=t, divergence="gkd", beta=beta, temperature=2.0,
      reduction="mean",
    ),
    h,
    w,
  )  # fmt: skip


def test_trl_gkd_without_labels_divides_by_the_batch_size():
  """``labels=None``: batchmean divides by ``jsd.size(0)``, the number of sequences."""
  h, w, t = _normal(15, 2, 3, D), _normal(16, D, V), _normal(17, 2, 3, V)
  _assert_same(
    lambda h, w: _trl_generalized_jsd_loss(h @ w, t, beta=0.3),
    lambda h, w: (
      jaxdiv.linear_distillation_loss(
        h, w, np.zeros((2, 3), int), teacher_logits=t, divergence="gkd", beta=0.3, reduction="sum"
      )
      / 2
    ),
    h,
    w,
  )


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_trl_beta_is_not_the_jsd_weight_at_the_ends(beta):
  """TRL's beta as ``jensen_shannon_divergence(weight=beta)`` is 0 at the ends; TRL is not."""
  s, t = _normal(18, N, V), _normal(19, N, V)
  trl = _trl_generalized_jsd_loss(s, t, beta=beta, reduction="sum")
  forward, reverse = dict(p_logits=t, q_logits=s), dict(p_logits=s, q_logits=t)
  kl = jaxdiv.kl_divergence(**(forward if beta == 0 else reverse))
  np.testing.assert_allclose(kl.sum(), trl, rtol=RTOL)
  assert float(trl) > 0.1
  jsd = jaxdiv.jensen_shannon_divergence(**forward, weight=beta)
  np.testing.assert_array_equal(jsd, 0.0)


def _torch_nll_loss_sum(log_probs, target, ignore_index):
  """``F.nll_loss(log_probs, target, reduction="sum", ignore_index=ignore_index)``."""
  valid = target != ignore_index
  picked = jnp.take_along_axis(log_probs, np.where(valid, target, 0)[:, None], -1)[:, 0]
  return -jnp.sum(jnp.where(valid, picked, 0.0))


def _liger_jsd_distillation_loss_fn(student_logits, teacher_logits, beta, target, ignore_index):
  """linkedin/Liger-Kernel, src/liger_kernel/chunked_loss/jsd_loss.py:
  ``LigerFusedLinearJSDFunction.distillation_loss_fn``."""
  student_log_probs = jax.nn.log_softmax(student_logits, axis=-1)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits, axis=-1)
  if beta == 0:
    jsd_loss = _torch_kl_div(student_log_probs, teacher_log_probs, "none", log_target=True)
  elif beta == 1:
    jsd_loss = _torch_kl_div(teacher_log_probs, student_log_probs, "none", log_target=True)
  else:
    log_mean_probs = jax.nn.logsumexp(
      jnp.stack([student_log_probs + np.log(1 - beta), teacher_log_probs + np.log(beta)]), axis=0
    )
    student_kl = _torch_kl_div(log_mean_probs, student_log_probs, "none", log_target=True)
    teacher_kl = _torch_kl_div(log_mean_probs, teacher_log_probs, "none", log_target=True)
    jsd_loss = beta * teacher_kl + (1 - beta) * student_kl
  jsd_loss = jsd_loss.sum(axis=-1)
  mask = target != ignore_index
  jsd_loss = jnp.where(mask, jsd_loss, 0.0)  # masked_fill(~mask, 0.0)
  return jsd_loss.sum()


def _liger_fused_linear_jsd_loss(
  student_input,
  student_weight,
  teacher_input,
  teacher_weight,
  true_labels,
  weight_hard_loss=0.5,
  weight_soft_loss=0.5,
  beta=0.5,
  ignore_index=-100,
  temperature=1.0,
):
  """``LigerFusedLinearJSDLoss(...)(student_input, student_weight, teacher_input, teacher_weight,
  true_labels)`` in one chunk: linkedin/Liger-Kernel,
  src/liger_kernel/chunked_loss/fused_linear_distillation.py,
  ``LigerFusedLinearDistillationBase.chunk_forward`` and ``_compute_loss`` (weights ``[V, D]``)."""
  student_logits_chunk = student_input @ student_weight.T
  student_log_probs_chunk = jax.nn.log_softmax(student_logits_chunk, axis=-1)
  teacher_logits_chunk = jax.lax.stop_gradient(teacher_input @ teacher_weight.T)  # no_grad
  ce_loss = _torch_nll_loss_sum(student_log_probs_chunk, true_labels, ignore_index)
  student_logits_chunk = student_logits_chunk / temperature
  teacher_logits_chunk = teacher_logits_chunk / temperature
  num_valid_tokens = max((true_labels != ignore_index).sum(), 1)
  hard_loss = ce_loss / num_valid_tokens
  soft_loss = _liger_jsd_distillation_loss_fn(
    student_logits_chunk, teacher_logits_chunk, beta, true_labels, ignore_index
  )
  soft_loss = soft_loss / num_valid_tokens
  return weight_hard_loss * hard_loss + weight_soft_loss * soft_loss


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_liger_fused_linear_jsd_loss(beta):
  """``beta`` weighs the teacher in the mixture and the average; the ends are forward and reverse
  KL (as TRL); the hard term is at temperature 1; no T^2; the heads are ``[V, D]``."""
  hs, ws = _normal(20, N, D), _normal(21, V, D)
  ht, wt = _normal(22, N, 3), _normal(23, V, 3, scale=2.0)
  _assert_same(
    lambda hs, ws: _liger_fused_linear_jsd_loss(
      hs, ws, ht, wt, LABELS, weight_hard_loss=0.3, weight_soft_loss=0.7, beta=beta,
      temperature=2.0,
    ),
    lambda hs, ws: jaxdiv.linear_distillation_loss(
      hs, ws.T, LABELS, teacher_hidden=ht, teacher_weight=wt.T, divergence="gkd", beta=beta,
      temperature=2.0, hard_weight=0.3, soft_weight=0.7, reduction="mean",
    ),
    hs,
    ws,
  )  # fmt: skip


def _liger_fused_linear_cross_entropy(
  _input,
  weight,
  target,
  ignore_index=-100,
  lse_square_scale=0.0,
  label_smoothing=0.0,
  reduction="mean",
  softcap=None,
):
  """``LigerFusedLinearCrossEntropyLoss(...)(lin_weight, _input, target)``, linkedin/Liger-Kernel:
  the forward of src/liger_kernel/ops/cross_entropy.py ``liger_cross_entropy_kernel`` (steps 3
  and 5) and the reduction of src/liger_kernel/ops/fused_linear_cross_entropy.py
  ``fused_linear_cross_entropy_forward``."""
  n_cols = weight.shape[0]
  target_mask = target != ignore_index
  n_non_ignore = target_mask.sum()
  X = _input @ weight.T
  if softcap is not None:
    X = softcap * jnp.tanh(X / softcap)
  ori_X_y = jnp.take_along_axis(X, np.where(target_mask, target, 0)[:, None], -1)[:, 0]
  eps = label_smoothing / n_cols
  scaled_x_sum = jnp.sum(-eps * X, axis=-1)
  lse = jax.nn.logsumexp(X, axis=-1)
  loss = lse - ori_X_y
  if label_smoothing > 0:
    smooth_loss = scaled_x_sum + label_smoothing * lse
    loss = loss * (1 - label_smoothing) + smooth_loss
  z_loss = lse_square_scale * lse * lse
  if reduction == "mean":
    loss = loss / n_non_ignore
    z_loss = z_loss / n_non_ignore
  loss = loss + z_loss
  loss_1d = jnp.where(target_mask, loss, 0.0)  # an ignored row returns before its store
  return loss_1d if reduction == "none" else jnp.sum(loss_1d)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_liger_fused_linear_cross_entropy(reduction):
  """z-loss (``lse_square_scale``), label smoothing, soft cap and ``ignore_index`` together."""
  h, w = _normal(24, N, D), _normal(25, V, D, scale=2.0)
  options = dict(lse_square_scale=0.01, label_smoothing=0.1, softcap=3.0)
  _assert_same(
    lambda h, w: _liger_fused_linear_cross_entropy(h, w, LABELS, reduction=reduction, **options),
    lambda h, w: jaxdiv.linear_cross_entropy(
      h, w.T, LABELS, z_loss=0.01, label_smoothing=0.1, soft_cap=3.0,
      reduction=None if reduction == "none" else reduction,
    ),
    h,
    w,
  )  # fmt: skip


def _maxtext_compute_loss(s_logits, t_logits, labels, alpha, temperature, top_k_indices=None):
  """AI-Hypercomputer/maxtext,
  src/maxtext/trainers/post_train/distillation/distillation_utils.py:
  ``CombinedDistillationStrategy.compute_loss`` (no feature loss) with ``labels`` from
  ``create_labels`` (one-hot rows, zero at ``pad_id``); dense mode, or the offline top-k mode
  where ``t_logits`` are the stored top-k teacher logits."""
  mask = jnp.any(labels != 0, axis=-1).astype(jnp.float64)
  valid_count = jnp.sum(mask)
  safe_count = jnp.maximum(valid_count, 1.0)
  log_s_T_full = jax.nn.log_softmax(s_logits / temperature, axis=-1)
  if top_k_indices is not None:
    t_p_T_sparse = jax.nn.softmax(t_logits / temperature, axis=-1)
    log_t_p_T_sparse = jax.nn.log_softmax(t_logits / temperature, axis=-1)
    s_logits_sparse = jnp.take_along_axis(s_logits, top_k_indices, axis=-1)
    log_s_T_sparse = jax.nn.log_softmax(s_logits_sparse / temperature, axis=-1)
    kl_softened_per_pos = jnp.sum(t_p_T_sparse * (log_t_p_T_sparse - log_s_T_sparse), axis=-1)
  else:
    t_p_T = jax.nn.softmax(t_logits / temperature, axis=-1)
    kl_softened_per_pos = _optax_kl_divergence(log_s_T_full, t_p_T)
  kl_softened_sum = jnp.sum(kl_softened_per_pos * mask)
  soft_loss_sum_scaled = kl_softened_sum * (temperature**2)
  soft_loss_mean = soft_loss_sum_scaled / safe_count
  ce_student_per_pos = _optax_softmax_cross_entropy(s_logits, labels)
  ce_student_sum = jnp.sum(ce_student_per_pos * mask)
  hard_loss_mean = ce_student_sum / safe_count
  return (alpha * soft_loss_mean) + ((1.0 - alpha) * hard_loss_mean)


def _maxtext_create_labels(targets, pad_id):
  """``CombinedDistillationStrategy.create_labels``: one-hot targets, zeroed at ``pad_id``."""
  one_hot = jax.nn.one_hot(targets, V, dtype=jnp.float64)
  return one_hot * (targets != pad_id)[..., None]


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_maxtext_combined_distillation_strategy(alpha):
  """alpha * T^2 * KL(teacher‖student) + (1 - alpha) * CE, each a mean over non-pad tokens;
  pad tokens (``pad_id``) become negative labels."""
  pad_id, targets = 0, np.array([1, 0, 3, 2, 6, 0])
  h, w, t = _normal(26, N, D), _normal(27, D, V), _normal(28, N, V, scale=2.0)
  onehot = _maxtext_create_labels(targets, pad_id)
  _assert_same(
    lambda h, w: _maxtext_compute_loss(h @ w, t, onehot, alpha, 2.0),
    lambda h, w: jaxdiv.linear_distillation_loss(
      h, w, np.where(targets == pad_id, -100, targets), teacher_logits=t, divergence="kl",
      temperature=2.0, scale_by_temperature_squared=True, soft_weight=alpha,
      hard_weight=1 - alpha, reduction="mean",
    ),
    h,
    w,
  )  # fmt: skip


def test_maxtext_offline_top_k_renormalizes_both_sides():
  """The offline mode (top-k teacher logits) restricts both sides to the k stored categories:
  ``tail="renormalize"``, with the teacher stored as log-probabilities at the temperature."""
  pad_id, targets, k, temperature = 0, np.array([1, 0, 3, 2, 6, 0]), 3, 2.0
  h, w, t = _normal(29, N, D), _normal(30, D, V), _normal(31, N, V, scale=2.0)
  idx = np.argsort(-t, axis=-1)[:, :k]
  t_top = np.take_along_axis(t, idx, -1)
  onehot = _maxtext_create_labels(targets, pad_id)
  _assert_same(
    lambda h, w: _maxtext_compute_loss(h @ w, t_top, onehot, 0.4, temperature, idx),
    lambda h, w: jaxdiv.linear_distillation_loss(
      h, w, np.where(targets == pad_id, -100, targets), teacher_indices=idx,
      teacher_log_probs=jax.nn.log_softmax(t_top / temperature), tail="renormalize",
      temperature=temperature, scale_by_temperature_squared=True, soft_weight=0.4,
      hard_weight=0.6, reduction="mean",
    ),
    h,
    w,
  )  # fmt: skip


# --- KL penalties: verl, OpenRLHF, TRL GRPO ---------------------------------------------------

# log-probabilities of sampled tokens under the policy and the reference; log r = ref - logprob
# is 28 (verl's log-ratio clamp bites), -12 and 12.5 (k3 > 10: the estimate clamps bite), 1e-3
# and moderate values
LOGPROB = np.array([-1.2, -0.3, -30.0, -0.5, -14.0, -2.0, -0.9])
REF_LOGPROB = np.array([-1.0, -0.35, -2.0, -12.5, -1.5, -2.0 + 1e-3, -0.2])


def _verl_kl_penalty_forward(logprob, ref_logprob, kl_penalty):
  """volcengine/verl, verl/trainer/ppo/core_algos.py: ``kl_penalty_forward`` ("abs" and "full"
  left out)."""
  if kl_penalty in ("kl", "k1"):
    return logprob - ref_logprob
  if kl_penalty in ("mse", "k2"):
    return 0.5 * jnp.square(logprob - ref_logprob)
  if kl_penalty in ("low_var_kl", "k3"):
    kl = ref_logprob - logprob
    kl = jnp.clip(kl, -20, 20)  # torch.clamp(kl, min=-20, max=20)
    ratio = jnp.exp(kl)
    kld = ratio - kl - 1
    return jnp.clip(kld, -10, 10)
  raise NotImplementedError


def _verl_kl_penalty(logprob, ref_logprob, kl_penalty):
  """volcengine/verl, verl/trainer/ppo/core_algos.py: ``kl_penalty``, with the "+" stripped
  before dispatch (the fix of verl PR #6058; at the commit read, a "+" name reaches
  ``kl_penalty_forward`` and raises ``NotImplementedError``)."""
  forward_score = _verl_kl_penalty_forward(logprob, ref_logprob, kl_penalty.removesuffix("+"))
  if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
    return forward_score
  backward_score = 0.5 * jnp.square(logprob - ref_logprob)
  sg = jax.lax.stop_gradient  # .detach()
  return backward_score - sg(backward_score) + sg(forward_score)


@pytest.mark.parametrize(
  ("mode", "options"),
  [
    ("k1", dict(estimator="k1")),
    ("k2", dict(estimator="k2")),
    ("low_var_kl", dict(estimator="k3", log_ratio_clip=(-20, 20), clip=(-10, 10))),
    ("k3+", dict(estimator="k3", log_ratio_clip=(-20, 20), clip=(-10, 10), straight_through=True)),
    ("k1+", dict(estimator="k1", straight_through=True)),
  ],
)
def test_verl_kl_penalty(mode, options):
  """``kl_penalty(logprob, ref_logprob, mode)`` is ``kl_estimate(ref_logprob, logprob, ...)``:
  the reference first; "+" keeps the (clamped) value with the unclamped k2 gradient."""
  _assert_same(
    lambda lp, ref: _verl_kl_penalty(lp, ref, mode),
    lambda lp, ref: jaxdiv.kl_estimate(ref, lp, **options),
    LOGPROB,
    REF_LOGPROB,
  )


def _openrlhf_compute_approx_kl(log_probs, log_probs_base, kl_estimator="k1"):
  """OpenRLHF/OpenRLHF, openrlhf/models/utils.py: ``compute_approx_kl``."""
  log_ratio = log_probs - log_probs_base
  if kl_estimator == "k2":
    log_ratio = log_ratio**2 / 2.0
  elif kl_estimator == "k3":
    log_ratio = jnp.exp(-log_ratio) - 1 + log_ratio
  return jnp.clip(log_ratio, -10, 10)  # .clamp(min=-10, max=10), for every estimator


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_openrlhf_compute_approx_kl(estimator):
  """No log-ratio clamp, and the estimate clamp applies to k1 too (at log r = -12 here)."""
  _assert_same(
    lambda lp, base: _openrlhf_compute_approx_kl(lp, base, estimator),
    lambda lp, base: jaxdiv.kl_estimate(base, lp, estimator=estimator, clip=(-10, 10)),
    LOGPROB,
    REF_LOGPROB,
  )


def test_trl_grpo_per_token_kl():
  """huggingface/trl, trl/trainer/grpo_trainer.py: ``GRPOTrainer._compute_loss``'s
  ``per_token_kl``, k3 with no clamp."""
  _assert_same(
    lambda lp, ref: jnp.exp(ref - lp) - (ref - lp) - 1,
    lambda lp, ref: jaxdiv.kl_estimate(ref, lp, estimator="k3"),
    LOGPROB,
    REF_LOGPROB,
  )


# --- token aggregation: verl, OpenRLHF, TRL GRPO ----------------------------------------------


def _verl_agg_loss(loss_mat, loss_mask, loss_agg_mode, loss_scale_factor=None):
  """volcengine/verl, verl/trainer/ppo/core_algos.py: ``agg_loss`` (``dp_size=1``, no global
  counts)."""
  if loss_agg_mode == "token-mean":
    return jnp.sum(loss_mat * loss_mask) / loss_mask.sum()
  if loss_agg_mode == "seq-mean-token-sum":
    seq_losses = jnp.sum(loss_mat * loss_mask, axis=-1)
    seq_mask = (jnp.sum(loss_mask, axis=-1) > 0).astype(float)
    return jnp.sum(seq_losses * seq_mask) / seq_mask.sum()
  if loss_agg_mode == "seq-mean-token-mean":
    seq_mask = jnp.sum(loss_mask, axis=-1)
    seq_losses = jnp.sum(loss_mat * loss_mask, axis=-1) / (seq_mask + 1e-8)
    seq_mask = (seq_mask > 0).astype(float)
    return jnp.sum(seq_losses * seq_mask) / seq_mask.sum()
  seq_losses = jnp.sum(loss_mat * loss_mask, axis=-1)  # "seq-mean-token-sum-norm"
  if loss_scale_factor is None:
    loss_scale_factor = loss_mask.shape[-1]
  return jnp.sum(seq_losses) / loss_scale_factor


@pytest.mark.parametrize(
  ("mode", "scale", "factor"),
  [
    ("token-mean", None, 1),
    ("seq-mean-token-sum", None, 1),
    ("seq-mean-token-mean", None, 1),
    # verl divides the sum over sequences by the constant: the mean over the sequences with a
    # token, times their number
    ("seq-mean-token-sum-norm", None, MASK.any(-1).sum()),
    ("seq-mean-token-sum-norm", 16.0, MASK.any(-1).sum()),
  ],
)
def test_verl_agg_loss(mode, scale, factor):
  values = _normal(32, *MASK.shape)
  normalizer = {"normalizer": scale} if scale else {}
  _assert_same(
    lambda v: _verl_agg_loss(v, MASK, mode, scale),
    lambda v: factor * jaxdiv.aggregate_tokens(v, MASK, mode, **normalizer),
    values,
    rtol=RTOL_EPS if mode == "seq-mean-token-mean" else RTOL,
  )


def _openrlhf_aggregate_loss(loss, loss_mask, token_level_loss=True):
  """OpenRLHF/OpenRLHF, openrlhf/models/loss.py: ``aggregate_loss`` (no global counts), and
  openrlhf/models/utils.py: ``masked_mean``."""
  if token_level_loss:
    return (loss * loss_mask).sum() / loss_mask.sum()
  token_counts = loss_mask.sum(-1)
  seq_loss = (loss * loss_mask).sum(-1) / (token_counts + 1e-8)
  seq_mask = (token_counts > 0).astype(float)
  return (seq_loss * seq_mask).sum() / seq_mask.sum()


@pytest.mark.parametrize(
  ("token_level_loss", "mode"), [(True, "token-mean"), (False, "seq-mean-token-mean")]
)
def test_openrlhf_aggregate_loss(token_level_loss, mode):
  _assert_same(
    lambda v: _openrlhf_aggregate_loss(v, MASK, token_level_loss),
    lambda v: jaxdiv.aggregate_tokens(v, MASK, mode),
    _normal(33, *MASK.shape),
    rtol=RTOL if token_level_loss else RTOL_EPS,
  )


def _trl_grpo_aggregate(per_token_loss, mask, loss_type, max_completion_length):
  """huggingface/trl, trl/trainer/grpo_trainer.py: ``GRPOTrainer._compute_loss``'s aggregation
  (one process, no gradient accumulation: ``num_items_in_batch`` is this batch's
  ``mask.sum()``)."""
  if loss_type == "grpo":
    return ((per_token_loss * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)).mean()
  if loss_type == "bnpo":
    return (per_token_loss * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  if loss_type == "dr_grpo":
    return (per_token_loss * mask).sum() / (per_token_loss.shape[0] * max_completion_length)
  num_items_in_batch = mask.sum()  # "dapo"
  normalizer = jnp.maximum(num_items_in_batch, 1.0) / 1  # / num_processes
  return (per_token_loss * mask).sum() / normalizer


@pytest.mark.parametrize(
  ("loss_type", "mode", "normalizer"),
  [
    ("grpo", "seq-mean-token-mean", {}),
    ("bnpo", "token-mean", {}),
    ("dr_grpo", "seq-mean-token-sum-norm", {"normalizer": 8}),
    ("dapo", "token-mean", {}),
  ],
)
def test_trl_grpo_loss_types(loss_type, mode, normalizer):
  """TRL's "grpo" and "dr_grpo" divide by every sequence (the empty one too): jaxdiv's
  sequence means leave empty sequences out, so they differ by (non-empty sequences) / B."""
  factor = MASK.any(-1).sum() / MASK.shape[0] if loss_type in ("grpo", "dr_grpo") else 1.0
  assert factor != 1.0 or loss_type in ("bnpo", "dapo")
  _assert_same(
    lambda v: _trl_grpo_aggregate(v, MASK, loss_type, max_completion_length=8),
    lambda v: factor * jaxdiv.aggregate_tokens(v, MASK, mode, **normalizer),
    _normal(34, *MASK.shape),
  )
