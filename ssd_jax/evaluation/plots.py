"""Precision/recall curves of a VOC evaluation, drawn to a PNG (matplotlib, no display needed)."""

from collections.abc import Sequence

from matplotlib.figure import Figure


def plot_precision_recall(result: dict, class_names: Sequence[str] | None, path: str,
                          title: str | None = None) -> None:
  """Writes one figure to ``path`` with a line per class of ``voc.evaluate``'s ``result``.

  ``class_names[l - 1]`` names label l (default: the label number); the legend gives each AP.
  """
  # A bare Figure renders with the Agg canvas on savefig and leaves pyplot's global state alone.
  figure = Figure(figsize=(9, 6), dpi=100, layout="constrained")
  axes = figure.add_subplot()
  for label, ap in sorted(result["AP"].items(), key=lambda item: -item[1]):
    name = class_names[label - 1] if class_names is not None else str(label)
    # The raw points, as the devkit plots them (a class without detections: an empty line).
    axes.plot(result["recall"][label], result["precision"][label], label=f"{name} ({ap:.3f})")
  axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=title or f"mAP {result['mAP']:.4f}")
  axes.grid(alpha=0.3)
  axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
              title="class (AP)")
  figure.savefig(path)
