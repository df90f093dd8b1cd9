"""The comparison stages of a run, each one module with the same parts, in the order their rows enter the tables.

A stage module has:
  NAME      its name (cache folder, unit labels) and SECTION, the config section its settings come from;
  PHASE     1, or 2 for stages that read phase 1's results (the maps);
  Settings  a frozen dataclass whose fields are the section's keys (experiments/settings.py reads and checks them;
            its problems() adds range rules);
  units(settings, ctx, pair, seed) -> the units the pair and seed need, each keyed by what it reads
            (experiments/units.make);
  compute(settings, ctx, unit) -> the unit's JSON-able result;
  tabulate(settings, ctx, pair, seed, entries, out) -> adds the rows, summary and resamples of the pair and seed
            to `out` (experiments/tables.Tables) from its units' results (entries: [(unit, result)]);
  finish(settings, ctx, pairs), optional: after the tables are written (the maps stage removes its checkpoints);
  prefetch(settings, study, workdir, model, stores, get_model), optional: during extraction, while `model` is
            loaded, what the stage will read of it beyond the stores (the steering contrasts), so that no unit
            reloads a model for it.
ctx is the run's experiments/context.Context. The runner plans, computes and tabulates by looping over STAGES; a new
stage is a module with these parts and a line here.
"""
from experiments.stages import maps, next_token, probes, similarity, steering

STAGES = (similarity, maps, next_token, probes, steering)
