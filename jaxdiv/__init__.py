"""jaxdiv: exact, stable information-theoretic divergences for JAX.

All functions take distributions in mathematical order, ``f(p, q)`` = D(p‖q), as
probabilities (positional), logits (``p_logits=``/``q_logits=``) or, for the first
argument of cross-entropy and KL, integer ``labels``; they reduce ``axis`` only.
"""

__version__ = "0.2.0"

from jaxdiv import generators as generators
from jaxdiv._checks import checked as checked
from jaxdiv._closed_forms import dirichlet_kl_divergence as dirichlet_kl_divergence
from jaxdiv._closed_forms import mvn_cross_entropy as mvn_cross_entropy
from jaxdiv._closed_forms import mvn_entropy as mvn_entropy
from jaxdiv._closed_forms import mvn_kl_divergence as mvn_kl_divergence
from jaxdiv._closed_forms import normal_cross_entropy as normal_cross_entropy
from jaxdiv._closed_forms import normal_entropy as normal_entropy
from jaxdiv._closed_forms import normal_kl_divergence as normal_kl_divergence
from jaxdiv._estimators import aggregate_tokens as aggregate_tokens
from jaxdiv._estimators import kl_estimate as kl_estimate
from jaxdiv._estimators import sequence_kl_penalty as sequence_kl_penalty
from jaxdiv._f_divergences import alpha_divergence as alpha_divergence
from jaxdiv._f_divergences import bhattacharyya_coefficient as bhattacharyya_coefficient
from jaxdiv._f_divergences import bhattacharyya_distance as bhattacharyya_distance
from jaxdiv._f_divergences import chi_squared_divergence as chi_squared_divergence
from jaxdiv._f_divergences import f_divergence as f_divergence
from jaxdiv._f_divergences import hellinger_distance as hellinger_distance
from jaxdiv._f_divergences import jeffreys_divergence as jeffreys_divergence
from jaxdiv._f_divergences import jensen_shannon_distance as jensen_shannon_distance
from jaxdiv._f_divergences import jensen_shannon_divergence as jensen_shannon_divergence
from jaxdiv._f_divergences import renyi_divergence as renyi_divergence
from jaxdiv._f_divergences import skew_kl_divergence as skew_kl_divergence
from jaxdiv._f_divergences import squared_hellinger_distance as squared_hellinger_distance
from jaxdiv._f_divergences import total_variation_distance as total_variation_distance
from jaxdiv._fused import linear_cross_entropy as linear_cross_entropy
from jaxdiv._fused import linear_distillation_loss as linear_distillation_loss
from jaxdiv._fused import linear_jensen_shannon_divergence as linear_jensen_shannon_divergence
from jaxdiv._fused import linear_kl_divergence as linear_kl_divergence
from jaxdiv._fused import linear_skew_kl_divergence as linear_skew_kl_divergence
from jaxdiv._fused import linear_total_variation_distance as linear_total_variation_distance
from jaxdiv._kl import binary_cross_entropy as binary_cross_entropy
from jaxdiv._kl import binary_kl_divergence as binary_kl_divergence
from jaxdiv._kl import cross_entropy as cross_entropy
from jaxdiv._kl import entropy as entropy
from jaxdiv._kl import kl_divergence as kl_divergence
from jaxdiv._sharded import sharded_cross_entropy as sharded_cross_entropy
from jaxdiv._sharded import sharded_kl_divergence as sharded_kl_divergence
from jaxdiv._sharded import sharded_linear_cross_entropy as sharded_linear_cross_entropy
from jaxdiv._sharded import sharded_linear_distillation_loss as sharded_linear_distillation_loss
from jaxdiv._sharded import (
  sharded_linear_jensen_shannon_divergence as sharded_linear_jensen_shannon_divergence,
)
from jaxdiv._sharded import sharded_linear_kl_divergence as sharded_linear_kl_divergence
from jaxdiv._sharded import sharded_linear_skew_kl_divergence as sharded_linear_skew_kl_divergence
from jaxdiv._sharded import (
  sharded_linear_total_variation_distance as sharded_linear_total_variation_distance,
)
