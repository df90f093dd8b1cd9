"""A small document model: blocks (headings, paragraphs, bullets, tables, images, code), their markdown and HTML
renderings, and the one formatting of each kind of number the documents show.

The report (experiments/report.py), the run comparison (experiments/compare.py) and the ablation ladder
(experiments/ladder.py) build lists of blocks; one list renders to markdown and to a self-contained HTML page
(inline CSS, images by relative path) that say the same thing. The plots (experiments/plots.py) use its
number formats in their titles and ticks.
"""
from __future__ import annotations

import dataclasses
import html
import re
from typing import Sequence

import numpy as np

DECIMALS = 3
MISSING = "-"
NO_RATIO = "no ratio"


@dataclasses.dataclass(frozen=True)
class Heading:
  level: int
  text: str


@dataclasses.dataclass(frozen=True)
class Para:
  text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
  items: tuple


@dataclasses.dataclass(frozen=True)
class Table:
  header: tuple
  rows: tuple


@dataclasses.dataclass(frozen=True)
class Image:
  path: str
  caption: str


@dataclasses.dataclass(frozen=True)
class Code:
  text: str


def to_markdown(blocks: Sequence) -> str:
  """Renders blocks as GitHub-flavoured markdown."""
  cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
  out = []
  for b in blocks:
    if isinstance(b, Heading):
      out.append("#" * b.level + " " + b.text)
    elif isinstance(b, Para):
      out.append(b.text)
    elif isinstance(b, Bullets):
      out.append("\n".join(f"- {item}" for item in b.items))
    elif isinstance(b, Table):
      lines = ["| " + " | ".join(cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
      lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in b.rows]
      out.append("\n".join(lines))
    elif isinstance(b, Image):
      out.append(f"![{b.caption}]({b.path})")
    elif isinstance(b, Code):
      out.append("```\n" + b.text + "\n```")
    else:
      raise ValueError(f"unknown document block {b!r}.")
  return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}code{background:#f2f2f2;padding:0 2px}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}"""


def _inline_html(text: str) -> str:
  return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def to_html(blocks: Sequence, title: str) -> str:
  """Renders blocks as one self-contained HTML page (inline CSS; images by relative path)."""
  body = []
  for b in blocks:
    if isinstance(b, Heading):
      body.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
    elif isinstance(b, Para):
      body.append(f"<p>{_inline_html(b.text)}</p>")
    elif isinstance(b, Bullets):
      body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
    elif isinstance(b, Table):
      head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
      rows = "".join("<tr>" + "".join(f"<td>{_inline_html(v)}</td>" for v in r) + "</tr>" for r in b.rows)
      body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    elif isinstance(b, Image):
      src = html.escape(b.path, quote=True)
      body.append(f'<figure><img src="{src}" alt="{html.escape(b.caption, quote=True)}">'
                  f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
    elif isinstance(b, Code):
      body.append(f"<pre>{html.escape(b.text)}</pre>")
    else:
      raise ValueError(f"unknown document block {b!r}.")
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
          f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def fmt(x) -> str:
  """A number with DECIMALS decimals ("nan" for NaN, MISSING for None)."""
  return MISSING if x is None else f"{float(x):.{DECIMALS}f}"


def fmt_ratio(x) -> str:
  """A ratio of within- and cross-family figures: NO_RATIO where it is NaN, as answer._ratio (cross-family figure
  < 0) and tables.headline_numbers (<= 0) give it."""
  return NO_RATIO if x is not None and np.isnan(x) else fmt(x)


def fmt_ci(ci) -> str:
  """An interval (lo, hi) as "[lo, hi]" (MISSING for None or a NaN bound: no interval)."""
  return MISSING if ci is None or np.isnan(ci).any() else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def fmt_ci_label(level) -> str:
  """The name of an interval at a confidence level: "95% CI", or "CI" where the level is None."""
  return f"{level:.0%} CI" if level is not None else "CI"


def fmt_depth(depth) -> str:
  """A relative depth (layer / num_layers) with two decimals."""
  return f"{float(depth):.2f}"


def fmt_layers(layers, depths) -> str:
  """A layer pair with its relative depths: "a, b (depth_a, depth_b)"; "a, b" where depths is None; a string as
  it is (figures over several layer pairs describe them)."""
  if isinstance(layers, str):
    return layers
  if depths is None:
    return f"{layers[0]}, {layers[1]}"
  return f"{layers[0]}, {layers[1]} ({fmt_depth(depths[0])}, {fmt_depth(depths[1])})"
