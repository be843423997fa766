"""Test set-up: 8 fake CPU devices and JAX's persistent compilation cache, before jax loads."""

import os
from pathlib import Path

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The tests' programs are tiny, so compiling them costs more than running them: LLVM at -O0 and
# XLA's older element-wise emitter compile a train step ~4x faster and run it ~3x slower.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parent.parent / ".cache" / "jax"))
# Cache small compiles too: the entry-point tests start several processes that compile the same
# programs.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

# Files that run stages end to end, longest first: the two workers take whole files (pyproject's
# --dist loadfile) in collection order, and a long file taken last leaves the other worker idle.
LONGEST_FIRST = ("test_pretrain_entry.py", "test_sweep.py", "test_rlhf.py", "test_sft_entry.py",
                 "test_rl.py", "test_chat.py", "test_scan.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as found
