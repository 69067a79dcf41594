"""TensorBoard scalars written without TensorFlow read back as TensorBoard reads them."""

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from ssd_jax import progress


def test_scalars_read_back_by_tensorboard(tmp_path):
  report = progress.Progress(str(tmp_path), total_steps=10, global_batch=4, every_seconds=0.0,
                             start_step=0)
  report.write(3, {"loss": 1.5, "num_pos": 7})
  report.write(5, {"loss": 0.25}, prefix="eval")
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  events.Reload()
  read = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}
  # tf.summary.scalar's format: float32 tensors tagged for the scalars plugin.
  assert read == {"train/loss": [(3, 1.5)], "train/num_pos": [(3, 7.0)],
                  "eval/loss": [(5, 0.25)]}
  assert events.SummaryMetadata("train/loss").plugin_data.plugin_name == "scalars"
