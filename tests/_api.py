"""The categorical functions of the public API with the extra arguments they need,
shared by the cross-API tests (errors, checked mode)."""

import jaxdiv

CATEGORICAL_CALLS = {
  "entropy": {},
  "cross_entropy": {},
  "kl_divergence": {},
  "jensen_shannon_divergence": {},
  "jensen_shannon_distance": {},
  "jeffreys_divergence": {},
  "skew_kl_divergence": {"alpha": 0.2},
  "total_variation_distance": {},
  "squared_hellinger_distance": {},
  "hellinger_distance": {},
  "bhattacharyya_coefficient": {},
  "bhattacharyya_distance": {},
  "chi_squared_divergence": {},
  "renyi_divergence": {"alpha": 2.0},
  "alpha_divergence": {"alpha": 0.5},
  "f_divergence": {"f": jaxdiv.generators.kl},
}
