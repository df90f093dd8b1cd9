"""experiments.document: each block in markdown and HTML, and the number formatters."""
import numpy as np
import pytest

from experiments import document
from experiments.document import Bullets, Code, Heading, Image, Para, Table


def test_markdown_renders_each_block():
  blocks = [Heading(2, "Maps"), Para("R² of `ridge`."), Bullets(("one", "two")),
            Table(("pair", "value"), (("a|b", 0.5), ("c", "line\nbreak"))), Image("figures/x.png", "x.png"),
            Code('{\n "n": 1\n}')]
  assert document.to_markdown(blocks) == (
      "## Maps\n\nR² of `ridge`.\n\n- one\n- two\n\n"
      "| pair | value |\n|---|---|\n| a\\|b | 0.5 |\n| c | line break |\n\n"
      "![x.png](figures/x.png)\n\n```\n{\n \"n\": 1\n}\n```\n")


def test_html_renders_each_block_escaped():
  blocks = [Heading(1, "a < b"), Para("see `x & y`"), Bullets(("<i>",)), Table(("h",), (("v&",),)),
            Image("figures/a\"b.png", "a<b"), Code("if a < b:")]
  page = document.to_html(blocks, "t & u")
  assert page.startswith('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>t &amp; u</title>')
  assert page.endswith("\n</body></html>\n") and "<style>" in page
  body = page.split("<body>\n")[1].split("\n</body>")[0].split("\n")
  assert body == ["<h1>a &lt; b</h1>", "<p>see <code>x &amp; y</code></p>", "<ul><li>&lt;i&gt;</li></ul>",
                  "<table><thead><tr><th>h</th></tr></thead><tbody><tr><td>v&amp;</td></tr></tbody></table>",
                  '<figure><img src="figures/a&quot;b.png" alt="a&lt;b"><figcaption>a&lt;b</figcaption></figure>',
                  "<pre>if a &lt; b:</pre>"]


@pytest.mark.parametrize("render", [document.to_markdown, lambda b: document.to_html(b, "t")])
def test_unknown_blocks_are_refused(render):
  with pytest.raises(ValueError, match="unknown document block"):
    render(["text"])


def test_formatters():
  assert document.fmt(0.12345) == "0.123" and document.fmt(np.float32(2)) == "2.000"
  assert document.fmt(None) == document.MISSING == "-" and document.fmt(float("nan")) == "nan"
  assert document.fmt_ratio(float("nan")) == document.NO_RATIO == "no ratio"
  assert document.fmt_ratio(0.5) == "0.500" and document.fmt_ratio(None) == "-"
  assert document.fmt_ci([0.1, 0.25]) == "[0.100, 0.250]" and document.fmt_ci(None) == "-"
  assert document.fmt_ci_label(0.95) == "95% CI" and document.fmt_ci_label(None) == "CI"
  assert document.fmt_depth(np.float64(1 / 3)) == "0.33"
  assert document.fmt_layers((3, 12), (0.25, 0.5)) == "3, 12 (0.25, 0.50)"
