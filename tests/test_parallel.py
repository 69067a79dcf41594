"""Global batches put on the devices ahead of use: order, values, sharding and how far ahead; the
batch size checked against the devices."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssd_jax import parallel
from ssd_jax.config_utils import ConfigError


def numbered_batches(count, batch=8, log=None):
  """Batches whose every value is the batch's number, plus a per-example index."""
  for number in range(count):
    if log is not None:
      log.append(number)
    yield {"image": np.full((batch, 4, 4, 3), number, np.float32),
           "index": np.arange(batch, dtype=np.int32) + 100 * number}


def _mesh(devices):
  return jax.make_mesh((devices,), (parallel.DATA_AXIS,), devices=jax.devices()[:devices])


def check_prefetched(devices):
  mesh = _mesh(devices)
  read = []
  out = parallel.device_batches(numbered_batches(5, log=read), mesh, size=2)
  first = next(out)
  assert read == [0, 1], "the second batch is put on the devices before the first is used"
  batches = [first] + list(out)
  assert read == [0, 1, 2, 3, 4] and len(batches) == 5
  for number, batch in enumerate(batches):
    expected = list(numbered_batches(number + 1))[-1]  # the numpy batch number ``number``
    before = parallel.global_batch(expected, mesh)  # what the loop put on the devices until now
    for key in ("image", "index"):
      assert batch[key].sharding == before[key].sharding == parallel.batch_sharded(mesh)
      np.testing.assert_array_equal(np.asarray(batch[key]), expected[key])
      shards = sorted(batch[key].addressable_shards, key=lambda s: s.index[0].start or 0)
      assert len(shards) == devices
      for i, shard in enumerate(shards):  # device i holds rows i*8/devices.. of the batch
        rows = slice(i * 8 // devices, (i + 1) * 8 // devices)
        np.testing.assert_array_equal(np.asarray(shard.data), expected[key][rows])


def test_batches_come_in_order_sharded_as_global_batch():
  check_prefetched(1)


def test_size_one_reads_only_what_is_asked_for():
  read = []
  out = parallel.device_batches(numbered_batches(3, log=read), _mesh(1), size=1)
  assert int(np.asarray(next(out)["image"]).max()) == 0 and read == [0]
  with pytest.raises(ValueError, match="device prefetch size 0"):
    next(parallel.device_batches(numbered_batches(1), _mesh(1), size=0))


def check_batch_sizes(devices):
  """A global batch must split evenly over the mesh's devices: one line naming the field."""
  mesh = _mesh(devices)
  parallel.check_batch_size(2 * devices, mesh)
  for bad in (0, -devices) + ((devices + 1, 3 * devices // 2) if devices > 1 else ()):
    with pytest.raises(ConfigError) as error:
      parallel.check_batch_size(bad, mesh)
    assert str(error.value) == (f"config.data.batch_size={bad}: expected a positive multiple of "
                                f"the device count ({devices}) and process count (1)")


def test_batch_sizes_are_checked_against_the_device_count():
  check_batch_sizes(1)


def test_batches_come_in_order_sharded_over_four_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  script = ("import jax, test_parallel as t; assert jax.device_count() == 4; t.check_prefetched(4);"
            " t.check_batch_sizes(4)")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("flags, named", [
    (("localhost", None, None), "--coordinator_address=localhost: expected HOST:PORT"),
    (("127.0.0.1:1234", 0, None), "--num_processes=0: expected 1 or more"),
    (("127.0.0.1:1234", 2, 2), "--process_id=2: expected 0..num_processes-1 (0..1)"),
    (("127.0.0.1:1234", 2, None), "--num_processes and --process_id go together"),
    ((None, None, 0), "--num_processes and --process_id go together"),
])
def test_cluster_flags_that_cannot_work_are_named_before_anything_starts(flags, named):
  with pytest.raises(ConfigError) as error:
    parallel.maybe_initialize_distributed(False, *flags)
  assert str(error.value).startswith(named)


def test_one_process_keeps_its_own_values():
  """Without jax.distributed the cross-process helpers are the identity on this process's
  values: its rows, its JSON, its replicated arrays (read back as numpy)."""
  rows = {"index": np.arange(3), "boxes": np.ones((3, 2, 4), np.float32)}
  assert parallel.gather_rows(rows) is rows
  summary = {"mAP": 0.25, "AP/cat": float("nan")}
  assert parallel.broadcast_json(summary) is summary
  tree = parallel.host_value({"w": jax.device_put(np.arange(4.0), parallel.replicated(_mesh(1)))})
  assert isinstance(tree["w"], np.ndarray) and tree["w"].tolist() == [0, 1, 2, 3]
  parallel.barrier("nothing to wait for")
