"""xsim.linalg.svd: equal to a float64 NumPy SVD, and never a batched LAPACK call on CPU (which can hang a process
with several devices)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.local import launch
from xsim import linalg, sharding


def _stack(*shape):
  return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _assert_matches_numpy(result, x, compute_uv):
  """Singular values and (up to sign) singular vectors of a float64 NumPy SVD, and U S V' = x."""
  u64, s64, vt64 = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  if not compute_uv:
    np.testing.assert_allclose(result, s64, atol=1e-5)
    return
  u, s, vt = (np.asarray(a, np.float64) for a in result)
  np.testing.assert_allclose(s, s64, atol=1e-5)
  signs = np.sign(np.sum(u * u64, axis=-2, keepdims=True))  # per singular vector
  np.testing.assert_allclose(u * signs, u64, atol=1e-4)
  np.testing.assert_allclose(vt * np.swapaxes(signs, -1, -2), vt64, atol=1e-4)
  np.testing.assert_allclose(np.einsum("...ik,...k,...kj->...ij", u, s, vt), x, atol=1e-5)


@pytest.mark.parametrize("compute_uv", [True, False])
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (3, 7, 5), (2, 3, 4, 6)])
def test_svd_equals_numpy(shape, compute_uv):
  x = _stack(*shape)
  _assert_matches_numpy(linalg.svd(x, compute_uv=compute_uv), x, compute_uv)
  _assert_matches_numpy(jax.jit(lambda a: linalg.svd(a, compute_uv=compute_uv))(x), x, compute_uv)


@pytest.mark.parametrize("compute_uv", [True, False])
def test_vmapped_svd_equals_numpy(compute_uv):
  x = _stack(2, 3, 6, 4)
  one = lambda m: linalg.svd(m, compute_uv=compute_uv)
  _assert_matches_numpy(jax.vmap(jax.vmap(one))(x), x, compute_uv)
  _assert_matches_numpy(jax.vmap(one, in_axes=1, out_axes=1)(x), x, compute_uv)
  scaled = jax.vmap(lambda m, c: linalg.svd(m * 1.0, compute_uv=compute_uv), in_axes=(None, 0))(x[0, 0], jnp.ones(3))
  for i in range(3):  # vmapped over another argument only: the same matrix each time
    _assert_matches_numpy(jax.tree.map(lambda a: a[i], scaled), x[0, 0], compute_uv)


def _lapack_operands(compiled_text: str) -> list[str]:
  """The operand shapes of every LAPACK SVD call in a compiled CPU program, e.g. ['f32[6,4]']."""
  calls = [line for line in compiled_text.splitlines() if "gesdd" in line and "custom-call" in line]
  assert calls, "no LAPACK SVD in the program"
  return [re.search(r"operand_layout_constraints=\{(.*?)\}", line).group(1) for line in calls]


def test_no_lapack_call_gets_a_batch():
  x = _stack(8, 3, 6, 4)
  programs = {
      "stack": lambda a: linalg.svd(a),
      "vmap of vmap": jax.vmap(jax.vmap(lambda m: linalg.svd(m, compute_uv=False))),
      "plain batched (control)": lambda a: jnp.linalg.svd(a, full_matrices=False),
  }
  mesh = jax.make_mesh((8,), ("devices",))
  programs["blockwise on 8 devices"] = lambda a: sharding.blockwise(jax.vmap(jax.vmap(linalg.svd)), mesh, a)
  for name, fn in programs.items():
    text = jax.jit(fn).lower(x).compile().as_text()
    shapes = re.findall(r"f32\[([\d,]+)\]", " ".join(_lapack_operands(text)))
    ranks = {len(shape.split(",")) for shape in shapes}
    if name.endswith("(control)"):
      assert ranks == {4}, (name, shapes)  # the test sees a batch where there is one
    else:
      assert ranks == {2}, (name, shapes)


@pytest.mark.slow  # 2 processes under jax.distributed
def test_two_processes_of_two_devices_do_not_hang():
  """Batched CPU SVDs on 2 devices of each of 2 processes hung jaxlib 0.10 (every intra-op thread waiting on
  work queued behind it); xsim.linalg's one matrix at a time does not."""
  assert launch(["-m", "tests.linalg_worker", "2", "1000", "256", "xsim"], 2, devices_per_process=2,
                timeout_s=300) == 0
