"""Figures of a run's tidy tables (experiments/outputs.py): similarity heatmaps over all layer pairs, transfer
R^2 maps against their shuffled-pair floor, and probe accuracies against their ceilings and chance.

Each figure is drawn on its own `matplotlib.figure.Figure` with the Agg canvas (no pyplot state, no display),
at 100 dpi, and written atomically; the same rows give the same PNG bytes. Heatmaps put model A's layers on
the vertical axis (depth grows upwards) and model B's on the horizontal one, ticks labelled "layer (relative
depth)". All heatmaps of one measure share one colour scale, so a weak cross-family map never looks as strong
as a within-family one merely through autoscaling.
"""
from __future__ import annotations

import collections
import os
import re
from typing import Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from experiments.document import fmt, fmt_depth
from experiments.grids import Grid, best_cell, layer_grids
from xsim import layer_select
from xsim.io import atomic_write
from xsim.similarity.preprocess import METHODS

DPI = 100
MAX_TICKS = 9


def _preprocess_rank(name: str):
  # Raw first, then the xsim.similarity.preprocess order; parametrized names ("clip:0.99") by their method.
  method = re.split(r"[^a-z_0-9]", name, maxsplit=1)[0]
  return (METHODS.index(method) if method in METHODS else len(METHODS), name)


def _slug(*parts) -> str:
  return "__".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", str(p)).strip("-") or "_" for p in parts)


class _Writer:
  """Saves figures under out_dir, refusing two different figures under one file name."""

  def __init__(self, out_dir: str):
    self.out_dir, self.paths = out_dir, []

  def save(self, fig: Figure, *name_parts) -> None:
    path = os.path.join(self.out_dir, _slug(*name_parts) + ".png")
    if path in self.paths:
      raise ValueError(f"two figures map to {path}: names differing only in punctuation ({name_parts}); "
                       "rename a model, measure or method.")
    FigureCanvasAgg(fig)
    # No "Software" entry: the bytes then depend on the drawing only.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}))
    self.paths.append(path)


def _figure(width: float, height: float, left: float = 1.1, bottom: float = 0.95, right: float = 0.2,
            top: float = 0.75, wspace: float = 0.2) -> Figure:
  """A width x height inch figure with fixed margins in inches: the labels have fixed formats, so this is as
  tidy as a layout engine and about twice as fast to draw."""
  fig = Figure(figsize=(width, height))
  fig.subplots_adjust(left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height,
                      wspace=wspace)
  return fig


def _ticks(layers: np.ndarray, depths: np.ndarray) -> tuple[np.ndarray, list[str]]:
  # Evenly stepped ticks, plus the last layer unless it would crowd the previous tick.
  step = max(1, -(-(len(layers) - 1) // (MAX_TICKS - 1)))
  where = np.arange(0, len(layers), step)
  if 2 * (len(layers) - 1 - where[-1]) >= step:
    where = np.append(where, len(layers) - 1)
  return where, [f"{layers[i]} ({fmt_depth(depths[i])})" for i in where]


def _scored(grid: Grid, matrix: np.ndarray, min_layer: int) -> np.ndarray:
  """matrix with NaN outside the scored layer pairs (xsim.layer_select.is_scored), where maxima are taken."""
  return np.where(layer_select.scored_mask(grid.layers_a, grid.layers_b, min_layer), matrix, np.nan)


def _heatmap(ax, grid: Grid, matrix: np.ndarray, name_a: str, name_b: str, min_layer: int = 0, **imshow):
  """Draws matrix [La, Lb] with layer/depth ticks and the max cell (over layers >= min_layer) outlined; -> the
  image (for a colorbar)."""
  image = ax.imshow(matrix, origin="lower", aspect="auto", interpolation="nearest", **imshow)
  for axis, (where, labels) in (("x", _ticks(grid.layers_b, grid.depths_b)), ("y", _ticks(grid.layers_a,
                                                                                          grid.depths_a))):
    getattr(ax, f"set_{axis}ticks")(where, labels, fontsize=7, rotation=45 if axis == "x" else 0)
  ax.set_xlabel(f"{name_b}: layer (relative depth)", fontsize=8)
  ax.set_ylabel(f"{name_a}: layer (relative depth)", fontsize=8)
  if np.isfinite(_scored(grid, matrix, min_layer)).any():
    i, j = best_cell(_scored(grid, matrix, min_layer))
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
  return image


def _max_text(grid: Grid, matrix: np.ndarray, min_layer: int = 0) -> str:
  matrix = _scored(grid, matrix, min_layer)
  if not np.isfinite(matrix).any():
    return "no finite value"
  i, j = best_cell(matrix)
  over = f" over layers >= {min_layer}" if min_layer > 0 else ""
  return f"max{over} {fmt(matrix[i, j])} at layers ({grid.layers_a[i]}, {grid.layers_b[j]}) (red box)"


def _range(matrices: Iterable[np.ndarray]) -> tuple[float, float]:
  """Shared colour range: [min(0, lowest), highest] over the finite values of all matrices."""
  finite = np.concatenate([m[np.isfinite(m)] for m in matrices] + [np.zeros(1)])
  low, high = float(finite.min()), float(finite.max())
  return low, high if high > low else low + 1.0


def similarity_heatmaps(rows: Sequence[dict], out_dir: str, min_layer: int = 0) -> list[str]:
  """similarity.csv rows -> paths of PNGs written to out_dir: one heatmap per (model pair, measure,
  preprocess), then one side-by-side panel per (model pair, measure) measured with several preprocessings.
  Every layer pair is drawn; the max is marked over the pairs with both layers >= min_layer."""
  grids = layer_grids(rows, ("model_a", "model_b", "relation", "measure", "preprocess"), ("value",))
  scale = collections.defaultdict(list)
  panels = collections.defaultdict(list)
  for (a, b, relation, measure, prep), grid in grids.items():
    scale[measure].append(grid.values["value"])
    panels[(a, b, relation, measure)].append((prep, grid))
  vrange = {m: _range(ms) for m, ms in scale.items()}
  writer = _Writer(out_dir)
  for (a, b, relation, measure, prep), grid in grids.items():
    matrix = grid.values["value"]
    fig = _figure(6.4, 5.4)
    ax = fig.add_subplot()
    image = _heatmap(ax, grid, matrix, a, b, min_layer, cmap="viridis", vmin=vrange[measure][0],
                     vmax=vrange[measure][1])
    fig.colorbar(image, ax=ax, label=measure)
    ax.set_title(f"{a} vs {b} ({relation})\n{measure}, preprocess={prep}\n{_max_text(grid, matrix, min_layer)}",
                 fontsize=9)
    writer.save(fig, "similarity", a, b, measure, prep)
  for (a, b, relation, measure), preps in panels.items():
    if len(preps) < 2:
      continue
    preps = sorted(preps, key=lambda p: _preprocess_rank(p[0]))
    fig = _figure(5.2 * len(preps) + 1.0, 5.4, top=0.95, wspace=0.35)
    axes = fig.subplots(1, len(preps), squeeze=False)[0]
    for ax, (prep, grid) in zip(axes, preps):
      matrix = grid.values["value"]
      image = _heatmap(ax, grid, matrix, a, b, min_layer, cmap="viridis", vmin=vrange[measure][0],
                       vmax=vrange[measure][1])
      ax.set_title(f"preprocess={prep}\n{_max_text(grid, matrix, min_layer)}", fontsize=9)
    fig.suptitle(f"{a} vs {b} ({relation}): {measure}", fontsize=10)
    fig.colorbar(image, ax=list(axes), label=measure)
    writer.save(fig, "similarity", a, b, measure, "all-preprocess")
  return writer.paths


def transfer_plots(rows: Sequence[dict], out_dir: str, min_layer: int = 0) -> list[str]:
  """transfer.csv rows -> paths of PNGs: held-out R^2 over layer pairs per (source, target, method), cells
  not above the shuffled-pair map's R^2 greyed out, the shuffled and mean-predictor floors in the title.

  The colour scale is fixed to [-1, 1] (R^2 <= 1; anything below -1 saturates), centred on the mean predictor.
  The best map is marked over the layer pairs with both layers >= min_layer.
  """
  grids = layer_grids(rows, ("source", "target", "relation", "method"), ("r2", "r2_shuffled", "r2_mean"))
  writer = _Writer(out_dir)
  for (source, target, relation, method), grid in grids.items():
    r2, shuffled = grid.values["r2"], grid.values["r2_shuffled"]
    fig = _figure(6.4, 5.8)
    ax = fig.add_subplot()
    image = _heatmap(ax, grid, r2, source, target, min_layer, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="held-out R$^2$", extend="min")
    below = np.zeros(r2.shape + (4,))
    below[~(r2 > shuffled)] = (0.5, 0.5, 0.5, 0.75)
    ax.imshow(below, origin="lower", aspect="auto", interpolation="nearest")
    ax.legend(handles=[Patch(color=(0.5, 0.5, 0.5, 0.75), label="R$^2$ not above shuffled-pair map")],
              loc="upper left", fontsize=7, framealpha=0.9)
    scored = _scored(grid, r2, min_layer)
    i, j = best_cell(scored) if np.isfinite(scored).any() else (0, 0)
    floors = f"shuffled-pair R$^2$ max {fmt(np.nanmax(shuffled))}; mean predictor {fmt(grid.values['r2_mean'][i, j])}"
    ax.set_title(f"{source} -> {target} ({relation}), {method}\n{_max_text(grid, r2, min_layer)}\n{floors}", fontsize=9)
    writer.save(fig, "transfer", source, target, method)
  return writer.paths


def probe_plot(best: Sequence[dict], out_dir: str) -> list[str]:
  """The best probes.csv row of each (task, source, target, seed) (tables.best_probe_rows) -> paths of PNGs, one
  per task: for each (source, target) pair, the accuracy of the target's probe on mapped source activations (with
  its CI whiskers) next to the shuffled-pair map, the target ceiling, the source's own probe and the majority
  class, at the layer pair with the best mapped accuracy."""
  seeds = {r["seed"] for r in best}
  by_task = collections.defaultdict(list)
  for row in best:
    by_task[row["task"]].append(row)
  bars = (("acc_mapped", "mapped source (target probe)", "tab:blue"), ("acc_shuffled", "shuffled-pair map", "tab:purple"),
          ("acc_target", "target ceiling", "tab:green"), ("acc_source", "source own probe", "tab:orange"),
          ("acc_majority", "majority class", "tab:gray"))
  width = 0.8 / len(bars)
  writer = _Writer(out_dir)
  for task, group in by_task.items():
    x = np.arange(len(group))
    fig = _figure(max(5.0, 1.6 * len(group) + 2.0), 4.8, left=0.7, bottom=0.8, top=0.4)
    ax = fig.add_subplot()
    for k, (column, label, colour) in enumerate(bars):
      heights = np.array([r[column] for r in group])
      err = None
      if column == "acc_mapped":
        err = np.nan_to_num(np.maximum(0.0, [[r["acc_mapped"] - r["acc_mapped_lo"] for r in group],
                                             [r["acc_mapped_hi"] - r["acc_mapped"] for r in group]]))  # NaN: none
      ax.bar(x + (k - (len(bars) - 1) / 2) * width, heights, width, yerr=err, capsize=3, label=label, color=colour)
    labels = [f"{r['source']}\n-> {r['target']}\n({r['relation']}, layers {r['layer_a']},{r['layer_b']})"
              + (f"\nseed {r['seed']}" if len(seeds) > 1 else "") for r in group]
    ax.set_xticks(x, labels, fontsize=7)
    # Headroom above 1 keeps the legend off the bars.
    ax.set_ylim(0.0, 1.3)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel("accuracy")
    ax.set_title(f"{task}: probe transfer (whiskers: CI of the mapped accuracy)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=2, framealpha=0.9)
    writer.save(fig, "probes", task)
  return writer.paths


RELATION_COLORS = {"within": ("#1f4e9c", "#5b8fd6", "#9bbcea"), "cross": ("#b34700", "#e07b2a", "#f0ad6e", "#c9901c"),
                   "random": ("0.45", "0.6", "0.75")}


def depth_curve_plots(pairs: dict, out_dir: str) -> list[str]:
  """summary.json's pairs -> paths of PNGs, one per measure and preprocessing with depth curves: for every pair
  (within family blue, across families orange, random-init grey), each source layer's best match over the target's
  layers (solid) and its value at the target layer of nearest relative depth (dashed) over the source's relative
  depth, shaded: their subsampling CIs (first seed)."""
  writer = _Writer(out_dir)
  by_key = collections.defaultdict(list)
  for name, entry in sorted(pairs.items()):
    for key, stats in entry.get("measures", {}).items():
      if stats.get("depth_curve"):
        by_key[key].append((name, entry["relation"], stats["depth_curve"]))
  for key, curves in sorted(by_key.items()):
    measure, prep = key.split("|")
    fig = _figure(6.4, 4.2, left=0.8, bottom=0.7, right=2.6, top=0.45)
    ax = fig.add_subplot()
    shade = collections.Counter()
    for name, relation, curve in sorted(curves, key=lambda c: (c[1] != "within", c[1] == "random", c[0])):
      palette = RELATION_COLORS.get(relation, ("0.3",))
      color = palette[shade[relation] % len(palette)]
      shade[relation] += 1
      depth = np.asarray(curve["depths_a"])
      label = name.replace("|", " → ") + f" ({relation})"
      ax.plot(depth, curve["best"], "-", color=color, linewidth=1.4, marker="o", markersize=2.5, label=label)
      ax.fill_between(depth, *curve["best_ci"], color=color, alpha=0.18, linewidth=0)
      ax.plot(depth, curve["matched"], "--", color=color, linewidth=1.0)
      ax.fill_between(depth, *curve["matched_ci"], color=color, alpha=0.08, linewidth=0)
    ax.set_xlabel("relative depth of the source layer")
    ax.set_ylabel(f"{measure} ({prep})")
    ax.set_title(f"{measure} ({prep}): best match (solid), matched depth (dashed)", fontsize=8)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), framealpha=0.9)
    writer.save(fig, "depth", measure, prep)
  return writer.paths


def steering_plot(rows: Sequence[dict], out_dir: str) -> list[str]:
  """steering.csv rows -> paths of PNGs, one per concept: for each (source, target) pair and scale, the mapped
  vector's efficacy over the target's relative depth (whiskers: its interval, prompts and direction noise), the
  null directions' 95th percentile dotted, 1 (the target's own vector) and 0 (no effect) as grey lines."""
  writer = _Writer(out_dir)
  by_concept = collections.defaultdict(lambda: collections.defaultdict(list))
  for row in rows:
    by_concept[row["concept"]][(row["source"], row["target"], row["relation"], row["scale"], row["seed"])].append(row)
  for concept, groups in by_concept.items():
    fig = _figure(6.4, 4.2, left=0.8, bottom=0.7, right=2.6, top=0.45)
    ax = fig.add_subplot()
    for k, ((source, target, relation, scale, seed), group) in enumerate(sorted(groups.items())):
      group = sorted(group, key=lambda r: r["depth_b"])
      depth = np.array([r["depth_b"] for r in group]) + 0.006 * k  # a small offset keeps whiskers apart
      efficacy = np.array([r["efficacy"] for r in group])
      err = np.nan_to_num(np.maximum(0.0, [efficacy - [r["efficacy_lo"] for r in group],
                                           [r["efficacy_hi"] for r in group] - efficacy]))
      line = ax.errorbar(depth, efficacy, yerr=err, capsize=3, marker="o", markersize=3,
                         label=f"{source} -> {target} ({relation}), x{scale:g}" + (f", seed {seed}" if seed else ""))
      ax.plot(depth, [r["null_q95"] for r in group], ":", color=line[0].get_color(), linewidth=1)
    for level in (0.0, 1.0):
      ax.axhline(level, color="0.6", linewidth=0.8)
    ax.set_xlabel("relative depth of the target layer")
    ax.set_ylabel("efficacy (mapped / own effect)")
    ax.set_title(f"{concept}: steering transfer (dotted: null q95)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), framealpha=0.9)
    writer.save(fig, "steering", concept)
  return writer.paths


def steering_heatmaps(rows: Sequence[dict], out_dir: str) -> list[str]:
  """steering.csv rows -> paths of PNGs for the pairs steered at every layer pair (steering.all_layer_pairs), one
  per concept and pair: the mapped vector's efficacy over layer pairs, one panel per scale (the best cell outlined).
  Pairs steered at a few depths only have no grid to draw (steering_plot draws them)."""
  writer = _Writer(out_dir)
  groups = collections.defaultdict(list)
  for row in rows:
    groups[(row["concept"], row["source"], row["target"])].append(row)
  for (concept, source, target), group in sorted(groups.items()):
    cells = {(r["layer_a"], r["layer_b"]) for r in group}
    num_a, num_b = len({a for a, _ in cells}), len({b for _, b in cells})
    if min(num_a, num_b) < 2 or len(cells) != num_a * num_b:
      continue
    by_scale = layer_grids(group, ("scale",), ("efficacy",))
    fig = _figure(3.6 * len(by_scale) + 1.6, 4.0, left=0.9, bottom=1.0, right=1.4, top=0.5, wspace=0.35)
    for k, ((scale,), grid) in enumerate(by_scale.items()):
      ax = fig.add_subplot(1, len(by_scale), k + 1)
      image = _heatmap(ax, grid, grid.values["efficacy"], source, target, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
      ax.set_title(f"x{scale:g} the own vector's norm", fontsize=8)
    fig.colorbar(image, ax=fig.axes, shrink=0.8).set_label("efficacy (mapped / own effect)", fontsize=8)
    fig.suptitle(f"{concept}: steering {source} -> {target} over layer pairs", fontsize=9)
    writer.save(fig, "steering", concept, source, target)
  return writer.paths
