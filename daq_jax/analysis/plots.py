"""Figures of the gradient analysis and of run comparisons (matplotlib, an optional extra).

Every function takes the plain numbers `analyze`/`compare` write to JSON and saves one PNG.
"""

from __future__ import annotations

import os

import numpy as np

from daq_jax.training.files import save_figure

INSTALL = "pip install 'daq_jax[plots]'  (or: pip install matplotlib)"
COLORS = {
  "daq": "tab:red",
  "daq_sr": "tab:brown",
  "daq_sr_wgrad": "tab:pink",
  "daq_sr_wgrad_rows": "tab:olive",
  "daq_sr_rows": "tab:cyan",
  "per_tensor": "tab:blue",
  "gvq": "tab:green",
  "mcs": "tab:orange",
  "ui8": "tab:purple",
}


def pyplot():
  """matplotlib.pyplot on a file backend; a one-line error saying how to install it."""
  try:
    import matplotlib
  except ImportError:
    raise ImportError(f"the figures need matplotlib, which is not installed: {INSTALL}") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _color(method: str, i: int) -> str:
  return COLORS.get(method, f"C{i}")


def _short(layer: str, width: int = 22) -> str:
  return layer if len(layer) <= width else "…" + layer[-(width - 1) :]


def histograms(layer: dict, path: str) -> str:
  """The paper's Fig. 1 for one layer: its most bell-shaped and most inverted-T channel of g,
  log counts, with each method's wgrad clip value marked (±)."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
  for ax, kind in zip(axes, ("bell", "inverted_t")):
    h = layer["histograms"].get(kind)
    if h is None:
      ax.set_axis_off()
      continue
    edges = np.asarray(h["edges"])
    counts = np.asarray(h["counts"])
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="0.6", log=True)
    for i, (method, clip) in enumerate(h["clips"].items()):
      for sign in (-1, 1):
        ax.axvline(
          sign * clip, color=_color(method, i), lw=1.2, ls="--", label=method if sign > 0 else None
        )
    title = "most bell-shaped" if kind == "bell" else "most inverted-T"
    ax.set_title(f"{title}: channel {h['channel']}, r = {h['r']:.3f}", fontsize=9)
    ax.set_xlabel("g")
  axes[0].set_ylabel("count (log)")
  handles, labels = axes[1].get_legend_handles_labels()
  if labels:
    fig.legend(handles, labels, loc="upper right", fontsize=8, title="wgrad clip", title_fontsize=8)
  fig.suptitle(f"{layer['layer']}: g {tuple(layer['g_shape'])}", fontsize=10)
  fig.tight_layout(rect=(0, 0, 0.9, 1))
  save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


def distributions(layers: list[dict], bell_threshold: float, path: str) -> str:
  """Per layer: the r_c = P(|g| > σ_c) of every channel against λ, the share of inverted-T
  channels, and each method's mean wgrad clip / max."""
  plt = pyplot()
  x = np.arange(len(layers))
  fig, (top, middle, bottom) = plt.subplots(
    3, 1, figsize=(max(8, 0.45 * len(layers) + 3), 8.5), sharex=True
  )
  for i, layer in enumerate(layers):
    r = np.asarray(layer["r"])
    jitter = np.random.default_rng(i).uniform(-0.25, 0.25, r.size)
    top.scatter(i + jitter, r, s=6, color="0.3", alpha=0.6)
  top.axhline(bell_threshold, color="tab:red", lw=1, label=f"λ = {bell_threshold} (bell above)")
  top.set_ylabel("r_c = P(|g| > σ_c)")
  top.legend(fontsize=8, loc="upper right")
  middle.bar(x, [layer["inverted_t_share"] for layer in layers], color="0.5")
  middle.set_ylabel("inverted-T share")
  middle.set_ylim(0, 1.05)
  methods = list(layers[0]["methods"]) if layers else []
  for i, method in enumerate(methods):
    ratios = [layer["methods"][method]["clip_over_max"]["mean"] for layer in layers]
    bottom.plot(x, ratios, marker="o", ms=3, color=_color(method, i), label=method)
  bottom.set_ylabel("mean wgrad clip / max|g|")
  bottom.legend(fontsize=8, ncol=len(methods))
  bottom.set_xticks(x, [_short(layer["layer"]) for layer in layers], rotation=70, fontsize=7)
  fig.tight_layout()
  save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


def errors(layers: list[dict], path: str) -> str:
  """Per layer and method: the cosine distance of both quantized g, and the relative L2 error
  of dW and dX, against the float ones (log scale)."""
  plt = pyplot()
  x = np.arange(len(layers))
  panels = (
    ("wgrad_g", "cosine_distance", "wgrad-path g: cosine distance"),
    ("dgrad_g", "cosine_distance", "dgrad-path g: cosine distance"),
    ("dw", "rel_l2", "dW: relative L2 error"),
    ("dx", "rel_l2", "dX: relative L2 error"),
  )
  fig, axes = plt.subplots(2, 2, figsize=(max(10, 0.5 * len(layers) + 4), 7), sharex=True)
  methods = list(layers[0]["methods"]) if layers else []
  for ax, (what, metric, title) in zip(axes.flat, panels):
    for i, method in enumerate(methods):
      values = [max(layer["methods"][method][what][metric], 1e-12) for layer in layers]
      ax.plot(x, values, marker="o", ms=3, color=_color(method, i), label=method)
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
  for ax in axes[1]:
    ax.set_xticks(x, [_short(layer["layer"]) for layer in layers], rotation=70, fontsize=7)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


def dw_errors(layers: list[dict], path: str, methods=None) -> str:
  """Per layer: each method's relative L2 error of dW (log scale), and the share of g's
  nonzero entries that its wgrad-path rounding sets to zero."""
  plt = pyplot()
  x = np.arange(len(layers))
  methods = list(methods or (layers[0]["methods"] if layers else []))
  fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(layers) + 3), 6.5), sharex=True)
  for i, method in enumerate(methods):
    color = _color(method, i)
    dw = [max(layer["methods"][method]["dw"]["rel_l2"], 1e-12) for layer in layers]
    zeroed = [layer["methods"][method]["wgrad_zeroed"]["share"] for layer in layers]
    axes[0].plot(x, dw, marker="o", ms=3, color=color, label=method)
    axes[1].plot(x, zeroed, marker="o", ms=3, color=color, label=method)
  axes[0].set_yscale("log")
  axes[0].set_title("dW: relative L2 error against float", fontsize=9)
  axes[1].set_title("wgrad-path g: share of nonzero entries rounded to zero", fontsize=9)
  axes[1].set_ylim(0, 1)
  axes[1].set_xticks(x, [_short(layer["layer"]) for layer in layers], rotation=70, fontsize=7)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


def curves(runs: list[dict], path: str) -> str:
  """Eval top-1 and train loss against epoch, one line per run."""
  plt = pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for i, run in enumerate(runs):
    label = run["label"]
    if run["eval_curve"]:
      ex, ey = zip(*run["eval_curve"])
      left.plot(ex, ey, marker="o", ms=3, color=f"C{i}", label=label)
    if run["loss_curve"]:
      lx, ly = zip(*run["loss_curve"])
      right.plot(lx, ly, color=f"C{i}", label=label)
  left.set_xlabel("epoch")
  left.set_ylabel("eval top-1")
  right.set_xlabel("epoch")
  right.set_ylabel("train loss")
  right.set_yscale("log")
  left.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


def safe_name(layer: str) -> str:
  return layer.replace(os.sep, "__").replace("/", "__") or "root"
