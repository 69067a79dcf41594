"""One process of the two-process jax.distributed test (tests/test_train.py); prints its loss.

Usage: python distributed_worker.py PORT PROCESS_ID NUM_PROCESSES
"""

import sys

import jax

port, process_id, num_processes = (int(arg) for arg in sys.argv[1:4])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                           process_id=process_id, initialization_timeout=120)

import test_train_step as t  # noqa: E402  (after distributed start-up, which must come first)
from ssd_jax import parallel  # noqa: E402
from ssd_jax import train_step as step_lib  # noqa: E402

config = t.tiny_config(batch_size=8)
mesh = parallel.create_mesh(config)
_, state, step = step_lib.make_step(config, mesh)
full = step_lib.synthetic_batch(config)
per_process = config.data.batch_size // jax.process_count()
rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
for _ in range(2):
  state, metrics = step(state, parallel.global_batch({k: v[rows] for k, v in full.items()}, mesh))
print(f"LOSS {float(metrics['loss']):.8f} DEVICES {jax.device_count()}", flush=True)
