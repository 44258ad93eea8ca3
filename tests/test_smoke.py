import numpy as np

import jaxdiv


def test_blog_example_exact():
  p, q = np.array([1, 0]), np.array([0.7, 0.3])
  assert float(jaxdiv.kl_divergence(p, q)) == 0.35667494393873245
  assert float(jaxdiv.cross_entropy(p, q)) == 0.35667494393873245
  assert float(jaxdiv.entropy(p)) == 0.0
