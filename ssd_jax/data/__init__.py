"""The input pipeline: data sources, SSD augmentation and batching (tf.data, for input only).

Typical use: ``for batch in train_iterator(config, start_step): ...`` and
``for batch in eval_iterator(config): ...``; see ``pipeline`` for the batch format and ``sources``
for the datasets. TensorFlow runs on the CPU only, so it never takes accelerator memory from JAX.
"""

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

# pylint: disable=g-import-not-at-top,wrong-import-position
from ssd_jax.data.pipeline import EVAL_KEYS
from ssd_jax.data.pipeline import eval_dataset
from ssd_jax.data.pipeline import eval_iterator
from ssd_jax.data.pipeline import examples
from ssd_jax.data.pipeline import TRAIN_KEYS
from ssd_jax.data.pipeline import train_dataset
from ssd_jax.data.pipeline import train_iterator
from ssd_jax.data.problems import BadDataError
from ssd_jax.data.problems import Problems
from ssd_jax.data.sources import DatasetNotFoundError
from ssd_jax.data.sources import make_source
from ssd_jax.data.sources import Source

__all__ = ["BadDataError", "DatasetNotFoundError", "EVAL_KEYS", "Problems", "Source", "TRAIN_KEYS",
           "eval_dataset", "eval_iterator", "examples", "make_source", "train_dataset",
           "train_iterator"]
