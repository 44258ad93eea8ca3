"""Runnable experiments that make jaxdiv's theory visible (see README).

Each module has a frozen ``Config``, a pure ``run(config) -> dict``, a ``plot(results,
out_dir)`` that draws only from the results, and a thin ``main(argv)``.
"""
