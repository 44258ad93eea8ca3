"""jaxdiv: exact, stable information-theoretic divergences for JAX.

All functions take distributions in mathematical order, ``f(p, q)`` = D(p‖q), as
probabilities (positional), logits (``p_logits=``/``q_logits=``) or, for the first
argument of cross-entropy and KL, integer ``labels``; they reduce ``axis`` only.
"""

__version__ = "0.1.0"

from jaxdiv._checks import checked as checked
from jaxdiv._kl import binary_cross_entropy as binary_cross_entropy
from jaxdiv._kl import binary_kl_divergence as binary_kl_divergence
from jaxdiv._kl import cross_entropy as cross_entropy
from jaxdiv._kl import entropy as entropy
from jaxdiv._kl import kl_divergence as kl_divergence
