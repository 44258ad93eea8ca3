r"""KL penalties in policy-gradient RL: which estimator, and where, against the exact optimum.

    python -m experiments.kl_penalty --out docs/results --figures docs/figures

The objective is :math:`J(\theta) = \mathbb{E}_{x \sim \pi_\theta}[r(x)] - \beta\,
\mathrm{KL}(\pi_\theta \| \pi_{\mathrm{ref}})`, maximised by
:math:`\pi^*(x) \propto \pi_{\mathrm{ref}}(x)\, e^{r(x)/\beta}`. Each variant is one way RL
code writes the penalty; all use the REINFORCE (score-function) gradient for the reward:

* ``exact``: ``jaxdiv.kl_divergence(p_logits=policy, q_logits=reference)`` in the loss.
* ``k1_reward`` / ``k3_reward``: :math:`-\beta k` added to the reward (no gradient through
  :math:`k`), the RLHF/PPO way.
* ``k1_loss`` / ``k2_loss`` / ``k3_loss``: :math:`\beta k` in the loss, differentiated
  (``k3_loss`` is GRPO's, the default of verl, OpenRLHF and SkyRL).
* ``k3_straight_through_loss``: verl's "k3+", the value of k3 with the gradient of k2
  (``jaxdiv.kl_estimate(..., straight_through=True)``).
* ``exact_sequence`` (sequence task): ``jaxdiv.sequence_kl_penalty``, the per-token exact KL
  with the score-function term for later tokens.

Every estimate is ``jaxdiv.kl_estimate(log_ref, log_policy, estimator=...)`` at the sampled
actions, with :math:`\log \rho = \log \pi_{\mathrm{ref}}(x) - \log \pi_\theta(x)`:
:math:`k_1 = -\log\rho`, :math:`k_2 = \frac12 (\log\rho)^2`, :math:`k_3 = \rho - 1 - \log\rho`.

**Expected gradients (bandit).** Write :math:`\pi = \mathrm{softmax}(\theta)`,
:math:`\ell = \log \pi - \log \pi_{\mathrm{ref}}`, :math:`s(x) = \nabla_\theta \log \pi(x) =
e_x - \pi`. Two identities do all the work: :math:`\mathbb{E}_\pi[f(x)\,s(x)] =
\pi \odot (f - \mathbb{E}_\pi f)` and :math:`\mathbb{E}_\pi[\rho(x)\,s(x)] =
\pi_{\mathrm{ref}} - \pi`. The true penalty gradient is :math:`\nabla\mathrm{KL}(\pi \|
\pi_{\mathrm{ref}}) = \pi \odot (\ell - \mathrm{KL})`; that of the other direction is
:math:`\nabla\mathrm{KL}(\pi_{\mathrm{ref}} \| \pi) = \pi - \pi_{\mathrm{ref}}`. Per variant,
the expected gradient of the penalty term is

* ``k1_reward``: :math:`\mathbb{E}[\ell s] = \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`: unbiased.
* ``k2_loss`` and ``k3_straight_through_loss``: :math:`\nabla k_2 = \ell\, s`, the same
  per-sample vector as ``k1_reward`` (Liu et al., 2025): unbiased.
* ``k1_loss``: :math:`\nabla k_1 = s`, mean 0: no penalty at all; the bias (of
  :math:`\nabla J`) is :math:`+\beta \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`.
* ``k3_loss``: :math:`\nabla k_3 = (1 - \rho)\, s`, mean :math:`\pi - \pi_{\mathrm{ref}} =
  \nabla\mathrm{KL}(\pi_{\mathrm{ref}} \| \pi)`, the other direction; bias
  :math:`\beta(\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})
  - \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi))`.
* ``k3_reward``: :math:`\mathbb{E}[k_3 s] = \mathbb{E}[\ell s] + \mathbb{E}[(\rho - 1) s] =
  \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}}) - \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi)`,
  the gradient of a difference that is third order in :math:`\ell` (k3's value is right,
  but its score-function gradient is only :math:`\nabla \mathbb{E}[k_3] -
  \mathbb{E}[\nabla k_3]`); bias :math:`+\beta \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi)
  = \beta(\pi - \pi_{\mathrm{ref}})`. Near :math:`\pi_{\mathrm{ref}}` it applies almost no
  penalty, and far from it the "penalty" is unbounded below.

**Sequences.** For :math:`x_{1:T} \sim \pi_\theta` autoregressively, with per-token
:math:`\ell_t`, :math:`s_t = \nabla \log \pi_\theta(x_t \mid x_{<t})` and
:math:`\mathrm{KL}_t = \mathrm{KL}(\pi_\theta(\cdot \mid x_{<t}) \| \pi_{\mathrm{ref}}(\cdot
\mid x_{<t}))`, the chain rule gives :math:`\mathrm{KL}_{\mathrm{seq}} =
\mathbb{E}[\sum_t \mathrm{KL}_t] = \mathbb{E}[\sum_t \ell_t]` and

.. math::

  \nabla \mathrm{KL}_{\mathrm{seq}}
  = \mathbb{E}\Big[\sum_t \big(\textstyle\sum_{t' \ge t} \ell_{t'}\big) s_t\Big]
  = \mathbb{E}\Big[\sum_t \nabla\mathrm{KL}_t + \big(\textstyle\sum_{t' > t}
    \mathrm{KL}_{t'}\big) s_t\Big].

So ``k1_reward`` with returns that include later tokens' penalties is unbiased (the first
form), and so is ``exact_sequence`` (the second). ``exact``, ``k2_loss`` and
``k3_straight_through_loss`` all have expectation :math:`\mathbb{E}[\sum_t
\nabla\mathrm{KL}_t]`, the per-token part only: the dependence of later prefixes on
:math:`\theta` is lost (Tang & Munos, 2025), and k2-as-loss equals k1-in-reward only for a
single token. ``k3_loss`` follows :math:`\mathbb{E}[\sum_t \nabla\mathrm{KL}(\pi_{\mathrm{ref}}
(\cdot \mid x_{<t}) \| \pi_\theta(\cdot \mid x_{<t}))]`, ``k1_loss`` nothing, and
``k3_reward`` :math:`\nabla \mathrm{KL}_{\mathrm{seq}} - \mathbb{E}[\sum_t
\nabla\mathrm{KL}(\pi_{\mathrm{ref}}(\cdot \mid x_{<t}) \| \pi_\theta(\cdot \mid x_{<t}))]`.

**Where the biased ones end.** The fixed point of ``k3_loss``'s expected gradient maximises
:math:`\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi_{\mathrm{ref}} \| \pi)`:
:math:`\pi_i = \beta\, \pi_{\mathrm{ref}, i} / (\beta + c - r_i)` with :math:`c =
\mathbb{E}_\pi[r]` fixed by the normalisation. ``k1_loss`` has none: it climbs towards the
deterministic policy on the best action (or sequence), whose KL to :math:`\pi^*` is its
limit. The per-token variants on sequences (``exact``, ``k2_loss``, k3+) end at the
policy that, prefix by prefix, solves the one-token problem with the expected reward-to-go
and no KL cost for later tokens (backward induction: :math:`\pi(a \mid h) \propto
\pi_{\mathrm{ref}}(a \mid h)\, e^{Q(h, a)/\beta}`, :math:`Q` the expected reward only);
``k3_loss`` on sequences at the same construction with the k3 fixed point per prefix. For
``k3_reward`` no fixed point is computed (its objective :math:`\mathbb{E}[r] -
\beta(\mathrm{KL}(\pi\|\pi_{\mathrm{ref}}) - \mathrm{KL}(\pi_{\mathrm{ref}}\|\pi))` is
unbounded above at the vertices of the simplex).

**What the run measures.** (a) Bandit: at fixed logits away from the reference, the mean of
``gradient_samples`` per-sample gradients of each variant (the same samples for all)
against the exact :math:`\nabla J`: ``bias_norm``, its standard error ``bias_se`` (the
square root of the trace of the per-sample covariance over the sample count), the
per-sample spread ``std`` (the square root of that trace), and the closed-form prediction
above, also checked against the exact expectation by enumerating the actions. The
sequence task gets the exact expected bias of each variant by enumerating all
:math:`K^T` sequences. (b) Training from :math:`\pi_{\mathrm{ref}}` with Adam (cosine-decayed
rate), the same batch size, steps and random draws for every variant, leave-one-out
baselines on the returns; ``KL(pi_theta || pi*)`` after every update. The run records its
own claims: unbiased variants have ``bias_norm <= 3 bias_se``; biased ones are within 3
standard errors of the prediction (as vectors); unbiased variants end within
``*_tolerance`` nats of :math:`\pi^*`, biased ones beyond ``away_factor`` times it, and those
with a predicted fixed point within ``fixed_point_rtol`` of its KL to :math:`\pi^*`.

**Two more lines.** (c) The clamps, as the trainers apply them (``clamps.py``): the
bandit policy moved away from the reference, ``ref + s (gradient_logits - ref)`` for
doubling ``s``, with every expectation exact over the actions: the mean and spread of
verl's ``low_var_kl`` (``jaxdiv.kl_estimate(..., log_ratio_clip=(-20, 20), clip=(-10,
10))``), OpenRLHF's clamped k3 and k1 (``clip=(-10, 10)``) against the exact KL, and the
expected penalty gradient of each (k3 in the loss, verl's k3+, k1 in the reward) against
:math:`\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`. (d) The length bias of
``jaxdiv.aggregate_tokens``'s modes (``lengths.py``): sequences of varied length (token 0
ends one, all end at ``length_horizon``), GRPO's per-token loss with an outcome advantage and
``jaxdiv.sequence_kl_penalty``, and each mode's exact expected gradient over batches of
``batch_size`` against :math:`\nabla J`, its fixed point (Adam then Newton on the exact
expected gradient) against :math:`\pi^*`, every closed form checked exactly against
``jax.grad`` of ``aggregate_tokens`` itself over every batch of two sequences. Their claims:
the clamped k3 mean equals the KL where no clamp binds and falls below it where one does;
verl's and OpenRLHF's k3 agree; k3+ keeps an unbiased gradient under the clamps; the k3
loss's gradient changes exactly where they bind; ``seq-mean-token-sum`` (and ``token-sum``,
``seq-mean-token-sum-norm``, constant multiples) have the sequence-level gradient, penalty
part included, and end at :math:`\pi^*`; ``token-mean`` and ``seq-mean-token-mean`` do not,
the latter beyond ``away_factor`` training tolerances.

**Layout.** ``model.py``: the problems, the tabular policies, the optimum and the one-step
fixed points; ``estimators.py``: the variants, parts (a) and (b) and the predicted ends;
``clamps.py`` and ``lengths.py``: (c) and (d); ``figures.py``: the figures;
``study.py``: ``Config``, ``run``, the report table and ``main``.

Results go to ``OUT/kl_penalty.json``, figures to
``FIGURES/kl_penalty_{bias,training,policies,clamps_lengths}.{png,pdf}``; ``--quick`` is a
small smoke configuration.

References: J. Schulman, "Approximating KL Divergence" (2020); Y. Tang & R. Munos, "On a few
pitfalls in KL divergence gradient estimation for RL" (2025, arXiv:2506.09477); "A Comedy
of Estimators" (arXiv:2512.21852); Liu et al. (arXiv:2510.01555).
"""

from experiments.kl_penalty.estimators import BANDIT_UNBIASED as BANDIT_UNBIASED
from experiments.kl_penalty.estimators import BANDIT_VARIANTS as BANDIT_VARIANTS
from experiments.kl_penalty.estimators import SEQUENCE_UNBIASED as SEQUENCE_UNBIASED
from experiments.kl_penalty.estimators import SEQUENCE_VARIANTS as SEQUENCE_VARIANTS
from experiments.kl_penalty.estimators import VARIANTS as VARIANTS
from experiments.kl_penalty.estimators import predicted_bandit_bias as predicted_bandit_bias
from experiments.kl_penalty.figures import plot as plot
from experiments.kl_penalty.lengths import MODES as MODES
from experiments.kl_penalty.study import NAME as NAME
from experiments.kl_penalty.study import QUICK as QUICK
from experiments.kl_penalty.study import Config as Config
from experiments.kl_penalty.study import main as main
from experiments.kl_penalty.study import run as run
from experiments.kl_penalty.study import table as table
