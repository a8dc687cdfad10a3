"""Does a pruned candidate come out as the network that was counted before training?

One command: ``python benchmarks/pruning_landing.py [--n 40] [--seed 0]``. Samples candidates of
the default space (random sampler), keeps those whose final network fits the budgets by the
pre-check and whose plan prunes, and prunes each one's (untrained) wide network by its plan, with
no fine-tuning (shapes do not depend on weights, nor on the importance metric: ``taylor``, which
needs training batches, is replaced by ``l2``). Two pruners in the same process:

- asc-search's, which lands every layer on the final spec's width (``asc_search.pruning.prune``);
- the reference: one uniform ratio per stage of the chain (``1 − target / current`` base width)
  with Torch-Pruning's ``MetaPruner`` and channels rounded to 8, as asc-search pruned before
  issue 12. It keeps the wide network's proportions, which round differently from the final
  spec's, so its result can differ from the counted network, over or under the budget.

Prints, for each pruner, how many results equal the pre-check count exactly, how many break the
budget, and the spread of MACs against the pre-check. Results are appended to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import optuna
import torch
from results import append_result, read_results

from asc_search.architecture import build_model
from asc_search.complexity import count_complexity
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import wide_and_chain
from asc_search.pruning.prune import PruningPlan, importance_metrics, prune, pruning_schedules
from asc_search.study.space import load_space

MAX_MACS, MAX_BYTES = 30_000_000, 128_000


def shape_metric(candidate) -> str:
    """The candidate's importance, but ``l2`` for one that needs training gradients."""
    name = candidate.plan.get("importance", "l2")
    return "l2" if name == "taylor" else name


def uniform_ratio_prune(model, wide, chain, candidate, pm) -> int:
    """The reference: a uniform ratio per chain stage through MetaPruner, rounded to 8."""
    import torch_pruning as tp

    metric = importance_metrics(pm)[shape_metric(candidate)]
    schedule = pruning_schedules(pm)[candidate.plan.get("schedule", "agp")]
    steps = int(candidate.plan.get("prune_steps", 1))
    example = torch.zeros(1, 1, 256, 65)
    current = wide.base_channels
    for target in chain:
        ratio = 1.0 - target / current - 1e-6
        ratios = schedule.ratios(ratio, steps)
        pruner = tp.pruner.MetaPruner(
            model.eval(), example, importance=metric.make(), pruning_ratio=ratio,
            iterative_steps=steps,
            iterative_pruning_ratio_scheduler=lambda r, n, ratios=ratios: list(ratios),
            ignored_layers=[model.head[0]], round_to=8, global_pruning=False)
        for _ in range(steps):
            pruner.step()
            model.zero_grad(set_to_none=True)
        current = target
    return count_complexity(model).macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="pruned, feasible candidates to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("pruning_landing.jsonl"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm = build_plugin_manager()
    space = load_space("sscp_mobile", pm=pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    done = {(e["seed"], e["index"]) for e in read_results(args.out)}
    index = 0
    while index < args.n:
        candidate = space.suggest(study.ask())
        wide, chain = wide_and_chain(candidate)
        counted = count_complexity(build_model(candidate.spec, pm=pm))
        if not chain or not counted.fits(max_macs=MAX_MACS, max_param_bytes=MAX_BYTES):
            continue
        index += 1
        if (args.seed, index) in done:
            continue
        plan = PruningPlan(importance=shape_metric(candidate),
                           schedule=candidate.plan.get("schedule", "agp"),
                           steps=int(candidate.plan.get("prune_steps", 1)), chain=chain,
                           final_finetune_epochs=0, max_macs=10**12, max_param_bytes=10**12)
        started = time.perf_counter()
        exact = prune(build_model(wide, pm=pm, seed=0), wide, plan, pm=pm, progress=False)
        exact_seconds = time.perf_counter() - started
        started = time.perf_counter()
        reference_macs = uniform_ratio_prune(build_model(wide, pm=pm, seed=0), wide, chain,
                                             candidate, pm)
        reference_seconds = time.perf_counter() - started
        append_result(args.out, {
            "seed": args.seed, "index": index, "wide_base": wide.base_channels,
            "chain": list(chain), "plan": candidate.plan, "counted_macs": counted.macs,
            "counted_bytes": counted.param_bytes, "exact_macs": exact.card.macs,
            "exact_bytes": exact.card.param_bytes, "reference_macs": reference_macs,
            "exact_seconds": round(exact_seconds, 2),
            "reference_seconds": round(reference_seconds, 2)})


def report(path: Path) -> str:
    entries = read_results(path)
    if not entries:
        return "no results yet"
    lines = ["| pruner | candidates | = pre-check count | over 30 M MACs | MACs − pre-check "
             "(median / min / max) | seconds per candidate (median) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in ("exact", "reference"):
        gaps = [e[f"{name}_macs"] - e["counted_macs"] for e in entries]
        lines.append(
            f"| {'asc-search (per-layer widths)' if name == 'exact' else 'uniform ratio (before)'}"
            f" | {len(entries)} | {sum(g == 0 for g in gaps)} | "
            f"{sum(e[f'{name}_macs'] > MAX_MACS for e in entries)} | "
            f"{statistics.median(gaps):+,.0f} / {min(gaps):+,} / {max(gaps):+,} | "
            f"{statistics.median(e[f'{name}_seconds'] for e in entries):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
