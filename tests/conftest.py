"""Test session set-up: 8 forced CPU devices so sharding tests run without accelerators, and one XLA compilation
cache for the session."""
import atexit
import os
import shutil
import tempfile

# Must be set before jax initializes its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if os.environ.get("PYTEST_XDIST_WORKER"):  # workers share the cores: one compute thread each
  os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"
  os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Many tests, and the runs they start in subprocesses, compile the same programs: with JAX's persistent cache they
# compile each once per session. The folder is new for every session (a clean run compiles everything), shared
# with pytest-xdist's workers and subprocesses through the environment, and removed by the process that made it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="xsim-tests-xla-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
