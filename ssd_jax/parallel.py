"""Devices, the mesh and global batches: the same code on one CPU, a GPU host or a TPU pod.

The mesh has one axis, ``data``: the batch is split over it and parameters are replicated.
Multi-host runs call ``jax.distributed.initialize()`` first; each process then feeds its own
slice of the global batch, which ``global_batch`` assembles into global arrays, and
``device_batches`` puts the next ones on the devices while the current step runs.
"""

import collections
import logging
import os
from typing import Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssd_jax.config_utils import ConfigError

DATA_AXIS = "data"
# Set by cluster launchers (TPU pods, SLURM, or by hand) when a run spans several processes.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS",
                    "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(force: bool = False) -> None:
  """Starts ``jax.distributed`` when asked to or when the environment describes a cluster."""
  if force or any(os.environ.get(name) for name in _DISTRIBUTED_ENV):
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


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
