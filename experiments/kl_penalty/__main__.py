"""``python -m experiments.kl_penalty``: see the package docstring."""

import sys

from experiments.kl_penalty.study import main

sys.exit(main())
