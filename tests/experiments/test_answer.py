"""The answer section: within / cross figures, the ratio's subsampling CI against NumPy, the generated reading."""
import numpy as np
import pytest

from experiments import answer, document, report
from experiments.configs import offline_study
from experiments.validate import validate_config


def headline():
  at = lambda a, b, da, db: dict(argmax=[a, b], argmax_depth=[da, db])
  sim = [dict(model_a="q1", model_b="q0", measure="cka_debiased", preprocess="none", relation="within", max=0.9,
              **at(1, 1, 0.04, 0.04)),
         dict(model_a="q1", model_b="s", measure="cka_debiased", preprocess="none", relation="cross", max=0.6,
              **at(9, 10, 0.32, 0.33)),
         dict(model_a="g", model_b="q0", measure="cka_debiased", preprocess="none", relation="cross", max=0.5,
              **at(3, 4, 0.17, 0.17)),
         dict(model_a="g", model_b="q0@random", measure="cka_debiased", preprocess="none", relation="random",
              max=0.1, **at(1, 2, 0.06, 0.08))]
  transfer = [dict(source="q1", target="q0", relation="within", r2=0.5, r2_shuffled_max=-0.01, best=[2, 3],
                   best_depth=[0.07, 0.12]),
              dict(source="g", target="q0", relation="cross", r2=0.2, r2_shuffled_max=0.0, best=[5, 6],
                   best_depth=[0.28, 0.25])]
  probes = [dict(task="cities", source="q1", target="q0", relation="within", acc_mapped=0.9, acc_target=0.95,
                 acc_shuffled=0.5, best=[4, 4]),
            dict(task="cities", source="g", target="q0", relation="cross", acc_mapped=0.72, acc_target=0.9,
                 acc_shuffled=0.52, best=[6, 8]),
            dict(task="next_token_top5", source="g", target="q0", relation="cross", acc_mapped=0.3, acc_target=0.4,
                 acc_shuffled=0.1, best=[6, 8])]
  return {"similarity": sim, "transfer": transfer, "probes": probes}


def test_figures_ratios_and_the_ci_of_the_cka_ratio():
  rng = np.random.default_rng(0)
  resamples = {"q1|q0": 0.9 + 0.02 * rng.normal(size=50), "q1|s": 0.6 + 0.03 * rng.normal(size=50),
               "g|q0": 0.5 + 0.03 * rng.normal(size=50)}
  relations = {"q1|q0": "within", "q1|s": "cross", "g|q0": "cross"}
  entries = {p: {"estimate": e, "samples": resamples[p], "n": 100} for p, e in (("q1|q0", 0.9), ("q1|s", 0.6),
                                                                                 ("g|q0", 0.5))}
  out = answer.answer(headline(), {("cka_debiased", "none"): entries}, relations)
  cka, r2, cities = out["figures"]
  assert (cka["within"], cka["cross"], cka["ratio"]) == pytest.approx((0.9, 0.55, 0.55 / 0.9))
  ratios = (resamples["q1|s"] + resamples["g|q0"]) / 2 / resamples["q1|q0"]
  deviations = ratios - 0.55 / 0.9  # half-samples of n = 100: scale sqrt(50 / 50) = 1
  expected = [0.55 / 0.9 - np.quantile(deviations, 0.975), 0.55 / 0.9 - np.quantile(deviations, 0.025)]
  assert cka["ratio_ci"] == pytest.approx(expected)
  assert cka["published_ratio"] == pytest.approx(np.mean([0.208, 0.222, 0.181, 0.184]) / 0.914)
  assert r2["ratio"] == pytest.approx(0.4) and r2["ratio_ci"] is None
  assert cities["figure"] == "probe transfer: cities" and cities["ratio"] == pytest.approx(0.8)
  # Every within- and cross-family pair's figure and where it sits, within first; random baselines are no answer.
  assert cka["pairs"] == [
      dict(pair="q1 → q0", relation="within", value=0.9, layers=[1, 1], depths=[0.04, 0.04]),
      dict(pair="q1 → s", relation="cross", value=0.6, layers=[9, 10], depths=[0.32, 0.33]),
      dict(pair="g → q0", relation="cross", value=0.5, layers=[3, 4], depths=[0.17, 0.17])]
  assert [p["value"] for p in r2["pairs"]] == [0.5, 0.2] and r2["pairs"][1]["depths"] == [0.28, 0.25]
  assert cities["pairs"][1] == dict(pair="g → q0", relation="cross", value=0.72, layers=[6, 8], depths=None)
  assert "0.61 of the within-family value" in out["reading"] and "0.22 in the published study" in out["reading"]
  assert "outside this interval" in out["reading"] and "80% of the within-family" in out["reading"]
  assert ("relative depths (source / target) 0.04 / 0.04 (q1 → q0) within family and 0.32 / 0.33 (q1 → s), "
          "0.17 / 0.17 (g → q0) across families") in out["reading"]


def test_a_negative_cross_family_r2_has_no_ratio():
  # The published protocol's untuned ridge predicts worse than the mean across families: cross / within would be
  # a negative "share" of the within-family fit.
  worse = headline()
  worse["transfer"][1]["r2"] = -0.27
  rows = np.arange(10)
  resamples = {"r2": {p: {"estimate": e, "samples": e + 0.01 * np.sin(rows), "n": 26}
                      for p, e in (("q1|q0", 0.5), ("q1|s", -0.27))}}
  r2 = answer.answer(worse, resamples, {"q1|q0": "within", "q1|s": "cross"})["figures"][1]
  assert r2["figure"] == "best transfer R²" and r2["cross"] == pytest.approx(-0.27)
  assert np.isnan(r2["ratio"]) and r2["ratio_ci"] is None
  text = document.to_markdown(report._answer_blocks(answer.answer(worse, resamples, {"q1|q0": "within",
                                                                                    "q1|s": "cross"}), 0.95))
  (row,) = [line for line in text.splitlines() if line.startswith("| best transfer R²")]
  assert "| 0.500 | -0.270 | no ratio | - |" in row and "nan" not in row  # as in ladder.md


def test_no_ci_when_pairs_hold_different_texts():
  relations = {"q1|q0": "within", "q1|s": "cross", "g|q0": "cross"}
  resamples = {p: {"estimate": 0.5, "samples": np.full(20, 0.5), "n": n}
               for p, n in (("q1|q0", 100), ("q1|s", 99), ("g|q0", 100))}
  out = answer.answer(headline(), {("cka_debiased", "none"): resamples}, relations)
  assert out["figures"][0]["ratio_ci"] is None and "CI" not in out["reading"].split(".")[0]


def test_a_run_without_a_within_pair_says_it_cannot_answer():
  cross_only = {"similarity": [r for r in headline()["similarity"] if r["relation"] != "within"]}
  assert answer.answer(cross_only, {}, {})["reading"].startswith("This run has no within-family")


@pytest.mark.parametrize("arg", ["published", "corrected", "ladder:0", "ladder:3", "ladder:6", "without:tuned_ridge"])
def test_offline_study_configs_validate(arg):
  validate_config(offline_study.get_config(arg))


def test_the_ladder_switches_one_choice_at_a_time():
  configs = [offline_study.get_config(f"ladder:{k}") for k in range(len(offline_study.LADDER) + 1)]
  flat = lambda c: {f"{k}.{j}": str(w) for k, v in c.to_dict().items() if isinstance(v, dict)
                    for j, w in v.items()} | {"models": str(c.models), "baselines": str(c.baselines)}
  for before, after in zip(configs, configs[1:]):
    changed = {k for k in flat(after) if flat(after)[k] != flat(before)[k]}
    assert changed, "a ladder step must change the config"
  assert configs[0].to_dict() == offline_study.get_config("published").to_dict()
  assert configs[-1].to_dict() == offline_study.get_config("corrected").to_dict()
  with pytest.raises(ValueError, match="ladder:K"):
    offline_study.get_config("ladder:9")


def test_without_leaves_one_choice_of_the_corrected_protocol_out():
  """'without:tuned_ridge' is the corrected protocol with the published untuned ridge on raw activations: only the
  transfer section differs, and it equals the published one's."""
  corrected, without = (offline_study.get_config(a).to_dict() for a in ("corrected", "without:tuned_ridge"))
  assert {k for k in corrected if corrected[k] != without[k]} == {"transfer"}
  assert without["transfer"] == offline_study.get_config("published").to_dict()["transfer"]
  with pytest.raises(ValueError, match="without:C"):
    offline_study.get_config("without:bf16")


def test_the_ladder_table_follows_each_steps_own_cka():
  from experiments import ladder
  raw = dict(figure="max debiased CKA (raw)", ratio=0.3, ratio_ci=[0.2, 0.4])
  standardized = dict(figure="max debiased CKA (standardized)", ratio=0.8, ratio_ci=[0.7, 0.9])
  cities = dict(figure="probe transfer: cities", ratio=0.75, ratio_ci=None)
  worse = dict(figure="best transfer R²", ratio=float("nan"), ratio_ci=None)  # cross-family R^2 < 0
  rows = ladder.ladder_rows([("0: published", "published protocol", {"figures": [raw, cities, worse]}),
                             ("3: standardize", "raw -> standardized",
                              {"figures": [raw, standardized, cities, dict(worse, ratio=0.5)]})])
  key = "max debiased CKA (the step's preprocessing)"
  assert rows[0][key] == (0.3, [0.2, 0.4]) and rows[1][key] == (0.8, [0.7, 0.9])
  text = ladder.markdown(rows, "note")
  assert "| 0: published | published protocol | 0.300 [0.200, 0.400] | 0.750 | no ratio |" in text
  assert "| 3: standardize | raw -> standardized | 0.800 [0.700, 0.900] | 0.750 | 0.500 |" in text


def test_r2_subsamples_are_the_best_scored_r2_on_half_the_test_rows():
  import jax
  from experiments import extraction, statistics, study
  from experiments.stages import maps as maps_stage
  from xsim import similarity as sim
  from xsim import transfer
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(3, 60, 5)).astype(np.float32)
  ys = (xs[:2] @ rng.normal(size=(5, 4)) + 0.5 * rng.normal(size=(2, 60, 4))).astype(np.float32)
  data = extraction.PairData(study.Pair("a", "b", "cross"), xs, ys, np.arange(60), (0, 1, 2), (0, 1), 2, 1, ())
  fit = transfer.fit_linear_maps(xs, ys, transfer.Ridge(), seed=3)
  stats = statistics.StatisticsSettings(min_layer=1, ci_resamples=7)
  got = maps_stage.r2_subsample_max(fit, data, seed=3, stats=stats)
  test = fit.split.test
  subsets = np.asarray(sim.permutations(jax.random.fold_in(jax.random.PRNGKey(3), 2), 7, len(test)))[:, :len(test) // 2]
  for r, s in enumerate(subsets):
    rows = test[s]
    best = max(float(np.mean(1 - ((ys[1, rows] - fit.predict(i, 1, xs[i, rows])) ** 2).sum(0)
                             / ((ys[1, rows] - ys[1, rows].mean(0)) ** 2).sum(0))) for i in (1, 2))
    assert got[r] == pytest.approx(best, abs=1e-4)


def test_probe_subsamples_are_the_best_scored_accuracy_on_half_the_test_rows():
  import jax
  from experiments import statistics
  from experiments.stages import probes
  from xsim import similarity as sim
  from xsim import transfer
  rng = np.random.default_rng(1)
  xs = rng.normal(size=(3, 80, 5)).astype(np.float32)
  ys = (xs[:2] @ rng.normal(size=(5, 4)) + 0.3 * rng.normal(size=(2, 80, 4))).astype(np.float32)
  labels = (ys[1, :, 0] > 0).astype(np.int64)
  maps = transfer.fit_linear_maps(xs[:, :40], ys[:, :40], transfer.Ridge(), seed=0)  # maps from other rows
  shuffled = transfer.fit_shuffled_maps(xs[:, :40], ys[:, :40], transfer.Ridge(), seed=0)
  target, source = (transfer.fit_logistic_probes(f[:, 40:], labels[40:], seed=2) for f in (ys, xs))
  got = probes.scores((maps, shuffled), (target, source), xs[:, 40:], labels[40:], seed=2,
                      scored=(np.array([1, 2]), np.array([1])), stats=statistics.StatisticsSettings(ci_resamples=9))
  test = target.split.test
  assert got["num_test"] == len(test) and len(got["mapped_subsample_max"]) == 9
  subsets = np.asarray(sim.permutations(jax.random.fold_in(jax.random.PRNGKey(2), 2), 9, len(test)))[:, :len(test) // 2]
  for r, s in enumerate(subsets):
    rows = test[s]
    best = max(float(np.mean(target.hits(1, maps.predict(i, 1, xs[i, 40:][rows]), labels[40:][rows])))
               for i in (1, 2))
    assert got["mapped_subsample_max"][r] == pytest.approx(best, abs=1e-6)


def test_probe_figures_get_a_ci_from_their_resamples():
  relations = {"q1|q0": "within", "q1|s": "cross", "g|q0": "cross"}
  samples = {"q1|q0": np.array([0.9, 0.8, 1.0]), "q1|s": np.array([0.7, 0.6, 0.8]), "g|q0": np.array([0.7, 0.8, 0.7])}
  entries = {p: {"estimate": e, "samples": samples[p], "n": 40} for p, e in (("q1|q0", 0.9), ("q1|s", 0.7),
                                                                                ("g|q0", 0.74))}
  cities = answer.answer(headline(), {("probe", "cities"): entries}, relations)["figures"][-1]
  assert cities["figure"] == "probe transfer: cities"
  ratio = 0.72 / 0.9
  deviations = (samples["q1|s"] + samples["g|q0"]) / 2 / samples["q1|q0"] - ratio
  assert cities["ratio_ci"] == pytest.approx([ratio - np.quantile(deviations, 0.975),
                                              ratio - np.quantile(deviations, 0.025)])


def test_no_ci_when_a_subsample_has_no_within_family_signal():
  relations = {"q1|q0": "within", "q1|s": "cross"}
  entries = {"q1|q0": {"estimate": 0.1, "samples": np.array([0.2, 0.0, 0.1]), "n": 40},
             "q1|s": {"estimate": 0.1, "samples": np.array([0.1, 0.1, 0.1]), "n": 40}}
  assert answer.ratio_ci(entries, relations, 0.95) is None


def test_scope_sensitivity_retakes_the_maxima_with_the_embeddings_in_and_one_more_block_out():
  from experiments import tables
  # Debiased CKA over hidden states 0..3 of each model; the embeddings (0) match best, block 1 next.
  value = {"within": lambda a, b: 0.95 if a == b == 0 else (0.9 if a == b == 1 else 0.5 + 0.1 * (a == b)),
           "cross": lambda a, b: 0.9 if a == b == 0 else (0.6 if a == b == 1 else 0.45 + 0.05 * (a == b))}
  rows = [dict(model_a=f"{rel}-a", model_b=f"{rel}-b", relation=rel, measure="cka_debiased", preprocess="none",
               layer_a=a, layer_b=b, depth_a=a / 3, depth_b=b / 3, value=value[rel](a, b), seed=0)
          for rel in ("within", "cross") for a in range(4) for b in range(4)]
  groups = tables.scope_sensitivity(rows, min_layer=1)
  assert sorted({g["min_layer"] for g in groups}) == [0, 1, 2]
  matched = tables.matched_depth_means(rows, min_layer=1)
  figures = answer.sensitivity(groups, matched)
  # Maxima over hidden states >= min_layer; at matched depths (the diagonal here) the mean over blocks 1..3.
  expected = {0: (0.95, 0.9), 1: (0.9, 0.6), 2: (0.6, 0.5), None: ((0.9 + 0.6 + 0.6) / 3, (0.6 + 0.5 + 0.5) / 3)}
  assert [f["min_layer"] for f in figures] == [0, 1, 2, None]
  assert figures[-1]["figure"] == "matched-depth debiased CKA (raw)"
  for f in figures:
    within, cross = expected[f["min_layer"]]
    assert (f["within"], f["cross"], f["ratio"]) == pytest.approx((within, cross, cross / within))
  text = document.to_markdown(report._answer_blocks(dict(figures=[], reading="", sensitivity=figures), 0.95))
  assert "| embeddings in (from hidden state 0) | max debiased CKA (raw) | 0.950 | 0.900 | 0.947 |" in text
  assert "| from block 2 | max debiased CKA (raw) | 0.600 | 0.500 | 0.833 |" in text
  assert "| as configured | matched-depth debiased CKA (raw) | 0.700 | 0.533 | 0.762 |" in text
  # The matched-depth ratio carries the CI of its subsamples; the scopes are point estimates.
  with_ci = answer.sensitivity(groups, matched, {"none": [0.7, 0.8]})
  assert [f["ratio_ci"] for f in with_ci] == [None, None, None, [0.7, 0.8]]
  text = document.to_markdown(report._answer_blocks(dict(figures=[], reading="", sensitivity=with_ci), 0.95))
  assert "| as configured | matched-depth debiased CKA (raw) | 0.700 | 0.533 | 0.762 | [0.700, 0.800] |" in text
  rng = np.random.default_rng(1)
  entries = {p: {"estimate": e, "samples": e + 0.02 * rng.normal(size=30), "n": 60}
             for p, e in (("w", 0.7), ("c", 0.533))}
  relations = {"w": "within", "c": "cross"}
  out = answer.answer({"sensitivity": groups, "matched_depths": matched},
                      {("matched", "cka_debiased", "none"): entries}, relations)
  assert out["sensitivity"][-1]["ratio_ci"] == answer.ratio_ci(entries, relations, 0.95) is not None


def _steering(within=(0.4, [0.2, 0.6]), cross=((0.3, [0.1, 0.5]), (0.2, [0.0, 0.4]))):
  record = lambda source, relation, e, ci: dict(source=source, target="q0", relation=relation, concept="weddings",
                                                efficacy=e, ci=ci, layer_pairs=[[8, 12, 2.0], [10, 14, 4.0]],
                                                max_p_value=0.05)
  return ([record("q1", "within", *within)]
          + [record(f"s{k}", "cross", e, ci) for k, (e, ci) in enumerate(cross)])


def test_steering_figures_and_their_intervals_against_normal_theory():
  """Each pair's efficacy ~ N(e, (width / 2z)^2), independent: the difference of relation means is normal, so its
  interval is closed form; the ratio's matches the same draws' quantiles, and is near the delta method's."""
  out = answer.answer({"steering": _steering()}, {}, {})
  (steer,) = out["figures"]
  assert steer["figure"] == "steering efficacy: weddings"
  assert (steer["within"], steer["cross"], steer["ratio"]) == pytest.approx((0.4, 0.25, 0.625))
  z = 1.959964
  sd = lambda width: width / (2 * z)
  diff_sd = np.sqrt(sd(0.4) ** 2 + (sd(0.4) ** 2 + sd(0.4) ** 2) / 4)
  ratio_ci, diff_ci = answer.steering_ci(_steering(), 0.95)
  assert diff_ci == pytest.approx([-0.15 - z * diff_sd, -0.15 + z * diff_sd], abs=0.01)
  assert f"cross - within -0.150 [{diff_ci[0]:+.3f}, {diff_ci[1]:+.3f}]" in steer["detail"]
  delta = 0.625 * np.sqrt((sd(0.4) / 0.4) ** 2 + (np.sqrt(2) * sd(0.4) / 2 / 0.25) ** 2)
  assert ratio_ci[0] < 0.625 < ratio_ci[1] and ratio_ci[1] - ratio_ci[0] > 2 * z * delta * 0.8
  assert steer["ratio_ci"] == ratio_ci
  assert steer["pairs"][0] == dict(pair="q1 → q0", relation="within", value=0.4, layers="8, 12 ×2; 10, 14 ×4",
                                   depths=None)
  assert "0.25 of the target's own vector's effect across families against 0.40 within (weddings)" in out["reading"]


def test_a_within_family_efficacy_near_zero_leaves_the_ratio_without_an_interval():
  ratio_ci, diff_ci = answer.steering_ci(_steering(within=(0.05, [-0.2, 0.3])), 0.95)
  assert ratio_ci is None and diff_ci[0] < 0.25 - 0.05 < diff_ci[1]
  assert answer.steering_ci(_steering()[:1], 0.95) == (None, None)  # no cross-family pair
  no_interval = [dict(r, ci=None) for r in _steering()]
  assert answer.steering_ci(no_interval, 0.95) == (None, None)
