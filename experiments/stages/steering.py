"""The steering stage: does a steering vector found on the source, mapped into the target, move the target like the
target's own vector?

For a pair (source a, target b) and a concept (xsim.data.concepts: contrast sets and prompts), at each layer pair:
- vectors: the contrastive mean difference of the concept's sets at the prompts' last token, on the source at
  layer i (mapped into the target by the maps stage's map i -> j, its linear part) and on the target at layer j
  (its own vector, the ceiling); null directions: `num_random` random ones drawn from the target's activations at
  layer j on the run's texts (Gaussian combinations of its centred rows: as natural as a contrast vector, without
  the concept; isotropic ones mostly move dimensions the model barely uses, and there outscored the concepts' own
  vectors on Gemma 3) and `num_shuffled` of the source vector mapped through ridge maps fit on shuffled pairs
  (closed form; other solvers: the maps stage's one shuffled map);
- scales: every direction is rescaled to `scales` x the own vector's natural norm, so the mapped vector is judged
  at the own vector's strength, never by a larger alpha;
- scores: each vector is added at every position of each prompt after block j of the target, and read as the
  concept says: the next-token log-probability mass on its words, or the target's own mass-mean probe for the
  concept (its contrast sets' class means) `readout_offset` blocks later; an effect is a prompt's score minus its
  unsteered score (the zero vector, in the same batch);
- efficacy: mapped effect / own effect, with an interval that holds prompt and direction noise and a p-value
  against the null directions (xsim.transfer.steering_efficacy); side effect: the perplexity ratio on held-out
  passages (the run's last texts) of the own, mapped and a random vector at that scale.
The summary figure follows a rule fixed in advance: at each layer pair, the largest scale where the own and mapped
vectors keep the target's perplexity within max_perplexity_ratio; the pair's figure is the mean over its layer
pairs. Writes steering.csv.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from experiments import cache, keys
from experiments.extraction import last_token_activations
from experiments.stages import maps
from experiments.units import make_unit

NAME, SECTION, PHASE = "steering", "steering", 2
VERSION = 1  # bump when the stage's numbers change
SIDE_EFFECT_VECTORS = ("own", "mapped", "random")  # the directions whose perplexity ratio is measured


@dataclasses.dataclass(frozen=True)
class Settings:
  """The config's `steering` section: the concepts (xsim.data.concepts.CONCEPTS), their contrast pairs and prompts;
  the held-out passages of the side effect and their length; the layer pairs (relative depths, or every scored layer
  pair); the scales (multiples of the own vector's norm); the null directions; the probe readout's distance in blocks;
  and the perplexity ratio the summary's scale must keep."""
  enabled: bool = False
  concepts: tuple[str, ...] = ("weddings", "truth")
  num_pairs: int = 32
  num_prompts: int = 16
  num_passages: int = 4
  passage_words: int = 32
  depths: tuple[float, ...] = (0.33, 0.5, 0.67)
  all_layer_pairs: bool = False
  scales: tuple[float, ...] = (1.0, 2.0, 4.0)
  num_random: int = 10
  num_shuffled: int = 10
  readout_offset: int = 2
  max_perplexity_ratio: float = 2.0

  def problems(self) -> list[str]:
    from xsim.data.concepts import CONCEPTS
    out = [f"steering concept {c!r} not in {sorted(CONCEPTS)}" for c in self.concepts if c not in CONCEPTS]
    if self.num_pairs < 4 or self.num_prompts < 4 or self.num_passages < 1 or self.passage_words < 2:
      out.append("steering needs num_pairs >= 4, num_prompts >= 4, num_passages >= 1 and passage_words >= 2")
    if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
      out.append(f"steering.depths={list(self.depths)} must be relative depths in [0, 1]")
    if not self.scales or min(self.scales) <= 0:
      out.append(f"steering.scales={list(self.scales)} must be positive multiples of the own vector's norm")
    if self.num_random < 1 or self.num_random + self.num_shuffled < 19:
      out.append(f"steering needs num_random >= 1 and num_random + num_shuffled >= 19 null directions for a 5% test "
                 f"(got {self.num_random} + {self.num_shuffled})")
    if self.readout_offset < 0 or self.max_perplexity_ratio <= 1.0:
      out.append("steering needs readout_offset >= 0 and max_perplexity_ratio > 1")
    return out


def _passages(settings: Settings, ctx) -> list:
  """The held-out passages of the side effect: the run's last texts, cut after passage_words words (the
  perplexity reads the full vocabulary at every position: Gemma's is 262k)."""
  from xsim.data import cut_text
  return [cut_text(t, max_words=settings.passage_words) for t in ctx.texts[-settings.num_passages:]]


def units(settings: Settings, ctx, pair, seed: int) -> list:
  """One unit per concept of a real pair (a random-init target has nothing to steer), keyed by the settings its
  computation reads: adding a concept or changing the summary's rule recomputes no finished concept."""
  if not settings.enabled or pair.is_random:
    return []
  stats = ctx.stats
  read = dataclasses.replace(settings, enabled=True, concepts=(), max_perplexity_ratio=0.0)
  return [make_unit(ctx.workdir, NAME, pair, seed, (concept,),
                    (maps.identity(ctx.settings(maps.NAME), ctx, pair, seed), read, ctx.study.extraction.identity(),
                     keys.texts(_passages(settings, ctx)), stats.min_layer, stats.ci_resamples, stats.ci_level,
                     VERSION))
          for concept in settings.concepts]


def layer_pairs(settings: Settings, ctx, data) -> list:
  """Positions (i, j) in the pair's layer lists: at the settings' relative depths, or every scored layer pair."""
  from xsim import layer_select
  if settings.all_layer_pairs:
    ia, ib = data.scored_positions(max(ctx.stats.min_layer, 1))
    return [(int(i), int(j)) for i in ia for j in ib]
  return layer_select.depth_pairs(data.layers_a, data.num_layers_a, data.layers_b, data.num_layers_b,
                                  settings.depths)


def _word_ids(tokenizer, words) -> np.ndarray:
  """The first token of each word after a space: the ids whose next-token probability mass is read."""
  return np.unique([tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in words])


def _reader(settings: Settings, concept, target, contrast, own_vectors, layers: list):
  """score(layer, vectors [I, D]) -> [I, n] the concept's score of every prompt with each vector added after
  hidden state `layer` (contrast: the target's [positive, negative] activations at hidden states `layers`,
  own_vectors [L, d] their mean difference)."""
  from xsim.activations import steering
  if concept.readout == "words":
    ids = _word_ids(target.tokenizer, concept.words)
    return lambda layer, vectors: steering.token_log_mass(target, concept.prompts, np.full(len(vectors), layer),
                                                          vectors, ids)
  # The mass-mean probe (Marks & Tegmark 2023): the difference of the class means, read in units of their distance,
  # 0 halfway between them. A logistic probe fit on a few dozen rows in hundreds of dimensions leans on
  # low-variance directions, which any perturbation moves: random directions then outscore the concept's own.
  direction = own_vectors
  midpoint = (contrast[0].mean(1) + contrast[1].mean(1)) / 2

  def score(layer, vectors):
    read = layers.index(min(layer + settings.readout_offset, target.config.num_layers))
    hidden = steering.hidden_at_last(target, concept.prompts, np.full(len(vectors), layer), vectors,
                                     [layers[read]])[:, 0]  # [I, n, d]
    return (hidden - midpoint[read]) @ direction[read] / np.dot(direction[read], direction[read])
  return score


def contrasts(settings: Settings, workdir: str, study, model: str, stores, get_model, seed: int) -> dict:
  """{concept: (positive, negative) [L + 1, n, d] activations of `model` at every hidden state, at the last token
  of each contrast text}: one store per model for every configured concept, so the model is loaded once for all of
  them, named by the model's own store (stores: the run's experiments/extraction.Stores), the texts and the
  settings."""
  from xsim.data.concepts import load_concept
  concepts = {c: load_concept(c, settings.num_pairs, settings.num_prompts, seed) for c in settings.concepts}
  texts = [t for c in concepts.values() for t in (*c.positive, *c.negative)]
  layers = list(range(stores.info[model].num_layers + 1))
  acts = last_token_activations(workdir, study.extraction, get_model, texts, layers, f"{model}-steering-contrasts",
                                stores.texts[model].manifest)
  out, start = {}, 0
  for name, c in concepts.items():
    out[name] = (acts[:, start:start + len(c.positive)],
                 acts[:, start + len(c.positive):start + len(c.positive) + len(c.negative)])
    start += len(c.positive) + len(c.negative)
  return out


def prefetch(settings: Settings, study, workdir: str, model: str, stores, get_model) -> None:
  """The contrast activations of `model` for every seed, while extraction has it loaded (a source is needed for
  nothing else here, so its units then load no source)."""
  if settings.enabled:
    for seed in study.seeds:
      contrasts(settings, workdir, study, model, stores, get_model, seed)


def compute(settings: Settings, ctx, unit) -> dict:
  """{"rows": one per layer pair and scale, the columns of steering.csv without the pair's, "readout"}."""
  import jax
  from xsim import resampling, transfer
  from xsim.activations import steering
  from xsim.data.concepts import load_concept
  (name,), pair, seed = unit.part, unit.pair, unit.seed
  concept = load_concept(name, settings.num_pairs, settings.num_prompts, seed)
  data = ctx.pair_data(pair, seed)
  fit, shuffled = maps.load(ctx, data, seed)
  positions = layer_pairs(settings, ctx, data)
  ia, ib = sorted({i for i, _ in positions}), sorted({j for _, j in positions})
  layers_a = [data.layers_a[i] for i in ia]
  layers_b = sorted({data.layers_b[j] for j in ib} | (
      {min(data.layers_b[j] + settings.readout_offset, data.num_layers_b) for j in ib}
      if concept.readout == "probe" else set()))

  def contrast(model, layers):
    return tuple(acts[layers] for acts in contrasts(settings, ctx.workdir, ctx.study, model, ctx.stores,
                                                    lambda: ctx.models.get(model), seed)[name])
  source_vectors = transfer.mean_difference(*contrast(pair.a, layers_a))
  target_contrast = contrast(pair.b, layers_b)
  own_vectors = transfer.mean_difference(*target_contrast)
  target = ctx.models.get(pair.b)
  score = _reader(settings, concept, target, target_contrast, own_vectors, layers_b)
  passages = _passages(settings, ctx)
  clean_nll = steering.mean_nll(target, passages, [0], np.zeros((1, target.config.hidden_size), np.float32))[0]
  standardize, train = ctx.settings(maps.NAME).standardize, fit.split.train
  # What only the target decides (its own vector, the random nulls, the zero vector) scores the same in every pair
  # with that target: stored under the target, the prompts and the vectors, so pairs that share a target share it.
  model = ctx.stores.texts[pair.b].manifest  # the target's weights, as its activation store names them
  readout = (concept.readout, concept.words, settings.readout_offset, keys.texts(concept.positive),
             keys.texts(concept.negative), ctx.study.extraction.identity())  # what the probe readout is fit on

  def stored(what: str, fn, layer: int, vectors: np.ndarray, texts) -> np.ndarray:
    path = keys.path(ctx.workdir, "cache/steering-target", f"{pair.b}-{name}-{what}-{layer}", model, what, layer,
                     hashlib.sha256(vectors.tobytes()).hexdigest(), keys.texts(texts), readout, VERSION,
                     suffix=".json")
    return np.asarray(cache.cached(path, lambda: fn(layer, vectors).tolist(), f"steering {pair.b} {what}"),
                      np.float32)

  def perplexity_nll(layer, vectors):
    return steering.mean_nll(target, passages, np.full(len(vectors), layer), vectors)

  num_scales, rows = len(settings.scales), []
  for i, j in positions:
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), i), j)
    layer_b = data.layers_b[j]
    source_vector, own = source_vectors[ia.index(i)], own_vectors[layers_b.index(layer_b)]
    mapped = np.asarray(fit.map_direction(i, j, source_vector[None]))
    if not settings.num_shuffled:
      shuffled_dirs = np.zeros((0, own.shape[0]), np.float32)
    elif fit.method == "ridge":
      permutations = resampling.permutations(jax.random.fold_in(key, 1), settings.num_shuffled, len(train))
      shuffled_dirs = transfer.shuffled_ridge_directions(data.xs[i][train], data.ys[j][train], source_vector,
                                                         float(fit.penalty[i, j]), permutations,
                                                         standardize=standardize)
    else:  # no closed form: the maps stage's one shuffled-pair map
      shuffled_dirs = shuffled.map_direction(i, j, source_vector[None])
    # Drawn from the target's layer alone (not the source layer), so every pair with this target draws the same.
    random_dirs = transfer.activation_directions(jax.random.fold_in(jax.random.PRNGKey(seed), layer_b),
                                                 settings.num_random, data.ys[j][train])
    natural = float(np.linalg.norm(own))
    scaled = lambda dirs: np.concatenate([np.asarray(transfer.with_norm(np.asarray(dirs, np.float32), s * natural))
                                          for s in settings.scales]).reshape(num_scales, len(dirs), -1)
    own_side = scaled(np.concatenate([own[None], np.asarray(random_dirs), np.zeros_like(own)[None]]))
    pair_side = scaled(np.concatenate([mapped, np.asarray(shuffled_dirs)]))
    target_scores = stored("scores", score, layer_b, own_side.reshape(-1, own.shape[0]), concept.prompts)
    pair_scores = score(layer_b, pair_side.reshape(-1, own.shape[0]))
    target_scores, pair_scores = (x.reshape(num_scales, -1, x.shape[-1]) for x in (target_scores, pair_scores))
    # own, mapped, random..., shuffled..., zero: the order steering_efficacy's arguments and the rows read
    scores = np.concatenate([target_scores[:, :1], pair_scores[:, :1], target_scores[:, 1:-1], pair_scores[:, 1:],
                             target_scores[:, -1:]], axis=1)
    effects = scores - scores[:, -1:]  # minus each prompt's unsteered score (the zero vector)
    # Side effects of own, mapped and the first random direction at each scale
    target_nll = stored("nll", perplexity_nll, layer_b, own_side[:, :2].reshape(-1, own.shape[0]), passages)
    mapped_nll = perplexity_nll(layer_b, pair_side[:, 0])
    nll = np.stack([target_nll.reshape(num_scales, 2, -1)[:, 0], mapped_nll,
                    target_nll.reshape(num_scales, 2, -1)[:, 1]], axis=1)  # [scales, 3, passages]
    perplexity = np.exp(nll.mean(-1) - clean_nll.mean())
    residual = float(np.linalg.norm(data.ys[j][train], axis=-1).mean())
    for s, scale in enumerate(settings.scales):
      e = transfer.steering_efficacy(effects[s, 1], effects[s, 0], effects[s, 2:-1], key=jax.random.fold_in(key, 2),
                                     num_resamples=ctx.stats.ci_resamples, level=ctx.stats.ci_level)
      random_null, shuffled_null = np.split(np.asarray(e.null_efficacies), [settings.num_random])
      rows.append(dict(layer_a=data.layers_a[i], layer_b=layer_b, scale=scale, norm=scale * natural,
                       residual_norm=residual, map_r2=float(fit.r2[i, j]), efficacy=e.efficacy,
                       efficacy_lo=e.ci_low, efficacy_hi=e.ci_high, p_value=e.p_value, null_mean=e.null_mean,
                       null_sd=e.null_sd, null_q95=e.null_q95, random_min=float(random_null.min()),
                       random_max=float(random_null.max()),
                       shuffled_mean=float(shuffled_null.mean()) if len(shuffled_null) else float("nan"),
                       own_effect=e.own_effect,
                       mapped_effect=e.mapped_effect, zero_effect=float(np.abs(effects[s, -1]).max()),
                       **{f"perplexity_{v}": float(perplexity[s, k]) for k, v in enumerate(SIDE_EFFECT_VECTORS)}))
  return {"rows": rows, "readout": concept.readout}


def summary_rows(settings: Settings, rows: list) -> list:
  """Each layer pair's row at the largest scale whose own and mapped vectors keep the target's perplexity within
  max_perplexity_ratio (none: the pair has no row), the rule the summary figure follows."""
  chosen = {}
  for row in rows:
    within = max(row["perplexity_own"], row["perplexity_mapped"]) <= settings.max_perplexity_ratio
    cell = (row["layer_a"], row["layer_b"])
    if within and row["scale"] >= chosen.get(cell, {"scale": -1.0})["scale"]:
      chosen[cell] = row
  return [chosen[c] for c in sorted(chosen)]


def tabulate(settings: Settings, ctx, pair, seed: int, entries, out) -> None:
  """steering.csv rows, and per concept the summary figure (the mean over layer pairs at the rule's scales, its
  bounds the means of theirs) in the pair's summary."""
  layout = ctx.layout(pair, seed)
  figures = out.pair_section(pair, seed, NAME)
  for unit, result in entries:
    concept = unit.part[0]
    rows = [dict(concept=concept, readout=result["readout"], source=pair.a, target=pair.b, relation=pair.relation,
                 **layout.cell(r["layer_a"], r["layer_b"]), **{k: v for k, v in r.items() if k not in
                                                                ("layer_a", "layer_b")}, seed=seed)
            for r in result["rows"]]
    out.add("steering.csv", rows)
    chosen = summary_rows(settings, rows)
    figures[concept] = {
        "efficacy": float(np.mean([r["efficacy"] for r in chosen])) if chosen else None,
        "ci": [float(np.mean([r[k] for r in chosen])) for k in ("efficacy_lo", "efficacy_hi")] if chosen else None,
        "layer_pairs": [[r["layer_a"], r["layer_b"], r["scale"]] for r in chosen],
        "max_p_value": float(max(r["p_value"] for r in chosen)) if chosen else None}
