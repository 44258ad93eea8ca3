"""Shared test set-up: float64 available for oracles, deterministic seeds."""

import jax

jax.config.update("jax_enable_x64", True)
