"""Write the small intersphinx inventories the docs cross-reference, for offline builds.

    .venv/bin/python docs/_inventories/make_inventories.py

The docs build reads no network, so instead of downloading each project's objects.inv
we list here the few names jaxdiv's docs link to, with their published page addresses,
and write them in Sphinx's inventory format (version 2, zlib-compressed). Add a name
here (and rerun) when the build reports an unresolved reference to another project.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project: (name, version, [(object name, domain:role, relative URI, display name)])
INVENTORIES = {
  "python": (
    "Python",
    "3",
    [
      ("int", "py:class", "library/functions.html#int"),
      ("float", "py:class", "library/functions.html#float"),
      ("bool", "py:class", "library/functions.html#bool"),
      ("str", "py:class", "library/stdtypes.html#str"),
      ("tuple", "py:class", "library/stdtypes.html#tuple"),
      ("dict", "py:class", "library/stdtypes.html#dict"),
      ("list", "py:class", "library/stdtypes.html#list"),
      ("None", "py:data", "library/constants.html#None"),
      ("ValueError", "py:exception", "library/exceptions.html#ValueError"),
      ("TypeError", "py:exception", "library/exceptions.html#TypeError"),
      ("typing.Any", "py:data", "library/typing.html#typing.Any"),
      ("typing.Callable", "py:data", "library/typing.html#typing.Callable"),
      ("typing.Literal", "py:data", "library/typing.html#typing.Literal"),
      ("typing.NamedTuple", "py:class", "library/typing.html#typing.NamedTuple"),
      ("typing.Sequence", "py:class", "library/typing.html#typing.Sequence"),
      (
        "collections.abc.Callable",
        "py:class",
        "library/collections.abc.html#collections.abc.Callable",
      ),
      (
        "collections.abc.Sequence",
        "py:class",
        "library/collections.abc.html#collections.abc.Sequence",
      ),
      ("functools.partial", "py:class", "library/functools.html#functools.partial"),
      ("dataclasses.dataclass", "py:function", "library/dataclasses.html#dataclasses.dataclass"),
      ("tokenize", "py:module", "library/tokenize.html#module-tokenize"),
      ("tokenize.tokenize", "py:function", "library/tokenize.html#tokenize.tokenize"),
    ],
  ),
  "jax": (
    "JAX",
    "latest",
    [
      ("jax.Array", "py:class", "_autosummary/jax.Array.html"),
      # Type aliases: listed as classes too, since annotations reference them as classes.
      ("jax.typing.ArrayLike", "py:data", "_autosummary/jax.typing.ArrayLike.html"),
      ("jax.typing.ArrayLike", "py:class", "_autosummary/jax.typing.ArrayLike.html"),
      ("jax.typing.DTypeLike", "py:data", "_autosummary/jax.typing.DTypeLike.html"),
      ("jax.typing.DTypeLike", "py:class", "_autosummary/jax.typing.DTypeLike.html"),
      ("jax.jit", "py:function", "_autosummary/jax.jit.html"),
      ("jax.vmap", "py:function", "_autosummary/jax.vmap.html"),
      ("jax.grad", "py:function", "_autosummary/jax.grad.html"),
      ("jax.jvp", "py:function", "_autosummary/jax.jvp.html"),
      ("jax.custom_jvp", "py:class", "_autosummary/jax.custom_jvp.html"),
      ("jax.custom_vjp", "py:class", "_autosummary/jax.custom_vjp.html"),
      ("jax.shard_map", "py:function", "_autosummary/jax.shard_map.html"),
      ("jax.make_mesh", "py:function", "_autosummary/jax.make_mesh.html"),
      ("jax.set_mesh", "py:function", "_autosummary/jax.set_mesh.html"),
      ("jax.sharding.Mesh", "py:class", "jax.sharding.html#jax.sharding.Mesh"),
      ("jax.sharding.NamedSharding", "py:class", "jax.sharding.html#jax.sharding.NamedSharding"),
      ("jax.sharding.PartitionSpec", "py:class", "jax.sharding.html#jax.sharding.PartitionSpec"),
      ("jax.nn.log_softmax", "py:function", "_autosummary/jax.nn.log_softmax.html"),
      ("jax.nn.softmax", "py:function", "_autosummary/jax.nn.softmax.html"),
      ("jax.numpy.sum", "py:function", "_autosummary/jax.numpy.sum.html"),
      ("jax.scipy.special.xlogy", "py:function", "_autosummary/jax.scipy.special.xlogy.html"),
      ("jax.scipy.special.rel_entr", "py:function", "_autosummary/jax.scipy.special.rel_entr.html"),
      ("jax.lax.fori_loop", "py:function", "_autosummary/jax.lax.fori_loop.html"),
      ("jax.experimental.checkify", "py:module", "jax.experimental.checkify.html"),
      (
        "jax.experimental.checkify.JaxRuntimeError",
        "py:class",
        "_autosummary/jax.experimental.checkify.JaxRuntimeError.html",
      ),
      (
        "jax.experimental.checkify.checkify",
        "py:function",
        "_autosummary/jax.experimental.checkify.checkify.html",
      ),
    ],
  ),
  "numpy": (
    "NumPy",
    "stable",
    [
      ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html"),
      ("numpy.sum", "py:function", "reference/generated/numpy.sum.html"),
      ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html"),
    ],
  ),
  "scipy": (
    "SciPy",
    "stable",
    [
      ("scipy.stats.entropy", "py:function", "reference/generated/scipy.stats.entropy.html"),
      ("scipy.special.rel_entr", "py:data", "reference/generated/scipy.special.rel_entr.html"),
      ("scipy.special.entr", "py:data", "reference/generated/scipy.special.entr.html"),
      ("scipy.special.xlogy", "py:data", "reference/generated/scipy.special.xlogy.html"),
      (
        "scipy.spatial.distance.jensenshannon",
        "py:function",
        "reference/generated/scipy.spatial.distance.jensenshannon.html",
      ),
    ],
  ),
  "optax": (
    "Optax",
    "latest",
    [
      ("optax.kl_divergence", "py:function", "api/losses.html#optax.losses.kl_divergence"),
      ("optax.losses.kl_divergence", "py:function", "api/losses.html#optax.losses.kl_divergence"),
      (
        "optax.softmax_cross_entropy",
        "py:function",
        "api/losses.html#optax.losses.softmax_cross_entropy",
      ),
      (
        "optax.softmax_cross_entropy_with_integer_labels",
        "py:function",
        "api/losses.html#optax.losses.softmax_cross_entropy_with_integer_labels",
      ),
      ("optax.adam", "py:function", "api/optimizers.html#optax.adam"),
    ],
  ),
}


def write(project: str, version: str, entries, path: Path) -> None:
  header = (
    "# Sphinx inventory version 2\n"
    f"# Project: {project}\n"
    f"# Version: {version}\n"
    "# The remainder of this file is compressed using zlib.\n"
  )
  body = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in entries)
  path.write_bytes(header.encode() + zlib.compress(body.encode(), 9))


def main() -> None:
  for key, (project, version, entries) in INVENTORIES.items():
    write(project, version, entries, HERE / f"{key}.inv")


if __name__ == "__main__":
  main()
