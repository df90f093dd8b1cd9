"""Layer specs, scored layers and depth matching (xsim/layer_select.py)."""
import numpy as np
import pytest

from xsim import layer_select


def test_specs_resolve_to_hidden_state_indices():
  assert layer_select.resolve("all", 4) == [0, 1, 2, 3, 4]
  # The published study's 9 depths over 16 blocks: 1 + round(d * 15), embeddings excluded.
  assert layer_select.resolve("depths:9", 16) == [1, 3, 5, 7, 9, 10, 12, 14, 16]
  assert layer_select.resolve([4, 0], 16) == [0, 4]


@pytest.mark.parametrize("spec, problem", [
    ("some", "must be 'all'"), ("depths:1", "K >= 2"), ("depths:x", "K >= 2"), ([], "non-empty"),
    ([1, -1], ">= 0"), ([2, 2], "repeats"), ([1.5], ">= 0"), (3, "must be 'all'")])
def test_bad_specs_say_why(spec, problem):
  assert problem in layer_select.spec_error(spec)
  with pytest.raises(ValueError, match="layer"):
    layer_select.resolve(spec, 8)


def test_specs_beyond_the_models_depth_are_named():
  assert "only 8 blocks" in layer_select.depth_error("depths:9", 8, "tiny")
  assert "[9]" in layer_select.depth_error([0, 9], 8, "tiny") and "tiny" in layer_select.depth_error([9], 8, "tiny")
  assert layer_select.depth_error([0, 8], 8) is None and layer_select.depth_error("depths:8", 8) is None


def test_scored_positions_leave_out_layers_below_min_layer():
  np.testing.assert_array_equal(layer_select.scored_positions([0, 1, 5], 1), [1, 2])
  with pytest.raises(ValueError, match="min_layer=6"):
    layer_select.scored_positions([0, 1, 5], 6, "tiny")
  assert layer_select.is_scored(1, 3, 1) and not layer_select.is_scored(0, 3, 1)


def test_depth_matching_of_depths_9_gives_9_pairs():
  # The seed protocol: layers="depths:9", num_depths=9 (the landed rule dropped block 1 and gave 8 pairs).
  for la, lb in ((16, 32), (30, 18), (9, 9), (24, 28)):
    layers_a, layers_b = layer_select.resolve("depths:9", la), layer_select.resolve("depths:9", lb)
    pairs = layer_select.depth_matched_pairs(layers_a, la, layers_b, lb, 9)
    assert pairs == [(k, k) for k in range(9)], (la, lb)


def test_depth_matching_over_all_layers_picks_the_depths_k_blocks():
  for la, lb, k in ((30, 18, 5), (3, 3, 3), (24, 28, 9)):
    pairs = layer_select.depth_matched_pairs(list(range(la + 1)), la, list(range(lb + 1)), lb, k)
    # With every hidden state present, position = index, and the blocks are exactly those of depths:K.
    assert sorted({i for i, _ in pairs}) == layer_select.resolve(f"depths:{k}", la)
    assert sorted({j for _, j in pairs}) == layer_select.resolve(f"depths:{k}", lb)
    assert len(pairs) == k


def test_depth_matching_over_an_explicit_list_takes_the_nearest_block_output():
  # Blocks 2 and 6 of 8 only: depth 0 -> block 1 is nearest to 2, depth 1 -> block 8 nearest to 6.
  assert layer_select.depth_matched_pairs([0, 2, 6], 8, [1, 4], 4, 2) == [(1, 0), (2, 1)]
  with pytest.raises(ValueError, match="block outputs"):
    layer_select.depth_matched_pairs([0], 8, [1], 4, 2)
  with pytest.raises(ValueError, match="num_depths"):
    layer_select.depth_matched_pairs([1], 8, [1], 4, 1)


def test_nearest_by_depth_takes_the_closest_and_the_first_on_ties():
  # a at 0.1, 0.5, 0.9 against b at 0.0, 0.25, 0.5, 0.75, 1.0: 0.1 -> 0.0; 0.5 -> 0.5; 0.9 -> 1.0
  assert layer_select.nearest_by_depth([0.1, 0.5, 0.9], [0.0, 0.25, 0.5, 0.75, 1.0]).tolist() == [0, 2, 4]
  assert layer_select.nearest_by_depth([0.5], [0.25, 0.75]).tolist() == [0]  # a tie: the first
