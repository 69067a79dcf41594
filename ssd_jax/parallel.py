"""Devices, the mesh and global batches: the same code on one CPU, a GPU host or a TPU pod.

The mesh has one axis, ``data``: the batch is split over it and parameters are replicated.
Multi-host runs call ``jax.distributed.initialize()`` first; each process then feeds its own
slice of the global batch, which ``global_batch`` assembles into global arrays, and
``device_batches`` puts the next ones on the devices while the current step runs. Only numbers
cross processes: ``gather_rows`` brings every process's rows of numeric arrays to every process,
``broadcast_json`` process 0's result (e.g. evaluation metrics) to all.
"""

import collections
import json
import logging
import os
from typing import Any, Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssd_jax.config_utils import ConfigError

DATA_AXIS = "data"
# Set by cluster launchers (TPU pods, SLURM, or by hand) when a run spans several processes.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
                    "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(force: bool = False, coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Starts ``jax.distributed`` when asked to (``force`` or any argument given) or when the
  environment describes a cluster (TPU pod, SLURM, a coordinator address).

  ``coordinator_address`` ("host:port" of process 0), ``num_processes`` and ``process_id`` go to
  ``jax.distributed.initialize`` as they are: on a plain cluster JAX cannot detect, give all three
  (``--coordinator_address``, ``--num_processes``, ``--process_id``); None lets JAX detect them.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    _check_process_flags(*explicit)
  elif not (force or any(os.environ.get(name) for name in _DISTRIBUTED_ENV)):
    return
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def _check_process_flags(coordinator_address: str | None, num_processes: int | None,
                         process_id: int | None) -> None:
  """ConfigError naming the flag when the explicit cluster description cannot work."""
  if coordinator_address is not None and not _is_host_port(coordinator_address):
    raise ConfigError(f"--coordinator_address={coordinator_address}: expected HOST:PORT of "
                      "process 0, e.g. 10.0.0.1:1234 (127.0.0.1:PORT on one machine)")
  if num_processes is not None and num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: expected 1 or more")
  if process_id is not None and (process_id < 0 or (num_processes is not None
                                                    and process_id >= num_processes)):
    raise ConfigError(f"--process_id={process_id}: expected 0..num_processes-1"
                      + (f" (0..{num_processes - 1})" if num_processes is not None else ""))
  if (num_processes is None) != (process_id is None):
    raise ConfigError("--num_processes and --process_id go together (with "
                      "--coordinator_address): give both, or neither to let JAX detect them")


def _is_host_port(address: str) -> bool:
  host, _, port = address.rpartition(":")
  return bool(host) and port.isdigit()


def create_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """A 1-D ``data`` mesh over ``config.mesh.data_devices`` devices (-1: all of them)."""
  available = jax.device_count()
  wanted = config.mesh.data_devices
  count = available if wanted == -1 else wanted
  if count < 1 or count > available:
    raise ConfigError(f"config.mesh.data_devices={wanted}: expected -1 or 1..{available} "
                     f"(devices available: {available})")
  # Auto axes: XLA propagates shardings from the jit boundary (Explicit axes would make every
  # reshape of a sharded batch in the model spell out its output sharding).
  return jax.make_mesh((count,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:count])


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """The global batch must be positive and split evenly over devices and processes."""
  devices = mesh.devices.size
  if global_batch <= 0 or global_batch % devices or global_batch % jax.process_count():
    raise ConfigError(f"config.data.batch_size={global_batch}: expected a positive multiple of the "
                     f"device count ({devices}) and process count ({jax.process_count()})")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch (leading axis) -> global arrays sharded on ``data``."""
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in local_batch.items()}


def device_batches(local_batches: Iterable[dict[str, np.ndarray]], mesh: Mesh,
                   size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """``global_batch`` of each of ``local_batches``, in order, ``size`` of them on the devices at once.

  A host-to-device copy is asynchronous, so the copies of the next ``size - 1`` batches run while
  the step on the current one computes (the pattern of ``flax.jax_utils.prefetch_to_device``, for
  global arrays). ``size`` 1 puts each batch only when it is asked for.
  """
  if size < 1:
    raise ValueError(f"device prefetch size {size}: expected 1 or more")
  local_batches = iter(local_batches)
  queue: collections.deque = collections.deque()
  while True:
    while len(queue) < size:
      batch = next(local_batches, None)
      if batch is None:
        break
      queue.append(global_batch(batch, mesh))
    if not queue:
      return
    yield queue.popleft()


def gather_rows(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's ``local`` numeric arrays (same keys and shapes on every process), joined
  along the leading axis in process order; ``local`` itself on one process."""
  if jax.process_count() == 1:
    return local
  return {key: np.asarray(value) for key, value in
          multihost_utils.process_allgather(local, tiled=True).items()}


def broadcast_json(value: Any) -> Any:
  """Process 0's ``value`` (anything ``json`` writes) on every process; the others' is ignored.

  Travels as bytes in two collectives (length, then the padded bytes), because only arrays cross
  processes and the other processes do not know the value's structure.
  """
  if jax.process_count() == 1:
    return value
  payload = json.dumps(value).encode() if jax.process_index() == 0 else b""
  length = int(multihost_utils.broadcast_one_to_all(np.int64(len(payload))))
  buffer = np.zeros(length, np.uint8)
  buffer[:len(payload)] = np.frombuffer(payload, np.uint8)
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier ``name`` (nothing on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def local_rows(array: jax.Array, mesh: Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array (``global_batch``'s inverse)."""
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      array, mesh, PartitionSpec(DATA_AXIS)))


def host_value(tree: Any) -> Any:
  """``tree`` of replicated (or fully addressable) arrays as numpy, on any process: a replicated
  array over several processes is read from this process's own copy."""
  def value(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError(f"host_value: array of shape {x.shape} is split over processes")
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(value, tree)
