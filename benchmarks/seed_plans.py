"""The seed's three pruning plans against the same final width trained directly, all with KD.

One command: ``python benchmarks/seed_plans.py [--wide-epochs 100] [--final-epochs 50]``.
On the embedded corpus's 5 % split, with the teacher ensemble that ``calibrate_corpus.py`` fits
(served from the cache when it is there):

- direct: ``seed-final`` (base 32) trained with KD for 150 epochs;
- S1: ``seed-s1-start`` (64) trained with KD, pruned to 32 in AGP steps;
- S2: ``seed-s2-start`` (96) trained with KD, pruned to 32 in linear steps;
- S3: the same 96-wide network, pruned 96 → 64 → 32, AGP steps within each stage.

Every plan fine-tunes with KD for ``--finetune-epochs`` after each intermediate step and for
``--final-epochs`` at the end; accuracy is recorded before the final fine-tune and after it. S2
and S3 start from one trained 96-wide network (their starting architectures are the same), which
is kept under ``--work`` so a rerun skips training it. Results are appended as JSON lines to
``--out`` (default: benchmarks/seed_plans.jsonl); a rerun skips the plans already recorded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from calibrate_corpus import recipe_for
from results import append_result, read_results

from asc_search.architecture import build_model, resolve_preset
from asc_search.checkpoint import load_checkpoint, save_checkpoint
from asc_search.complexity import count_complexity
from asc_search.evaluate import evaluate
from asc_search.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.prune import PruningPlan, prune
from asc_search.teachers import ensemble_logits
from asc_search.train import fit, predict

PLANS = {  # name: (starting preset, schedule, chain of base widths)
    "S1": ("seed-s1-start", "agp", (32,)),
    "S2": ("seed-s2-start", "linear", (32,)),
    "S3": ("seed-s3-start", "progressive", (64, 32)),
}


def scores(model, data) -> dict:
    out = {}
    for name, labelled in (("validation", data.validation), ("test", data.test)):
        result = evaluate(predict(model, labelled.features), labelled.labels, labelled.devices)
        out[name] = {"macro": round(result.macro_accuracy, 4), "seen": result.seen,
                     "unseen": result.unseen}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--wide-epochs", type=int, default=100,
                        help="KD epochs for the wide starting networks")
    parser.add_argument("--direct-epochs", type=int, default=150)
    parser.add_argument("--steps", type=int, default=5, help="pruning steps per stage")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=50)
    parser.add_argument("--metric", default="l2")
    parser.add_argument("--plans", nargs="*", default=["direct", *PLANS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where trained wide networks are kept [default: cache/benchmarks]")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("seed_plans.jsonl"))
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    work = args.work or cache / "benchmarks" / "seed-plans"
    work.mkdir(parents=True, exist_ok=True)
    done = {e["plan"] for e in read_results(args.out)}

    def record(entry: dict) -> None:
        append_result(args.out, entry)

    data = load_split_data(args.data, args.split, pm=pm, cache_dir=cache, progress=False)
    # The teachers' recipe is calibrate_corpus.py's, so its cached ensemble is reused.
    teacher_recipe = recipe_for(args.split, len(data.train), 0, 256)
    ensemble = ensemble_logits(data.train, teacher_names=["wide_cp_mobile", "patchout_transformer"],
                               pm=pm, cache_dir=cache, recipe=teacher_recipe, progress=False)
    logits = ensemble.logits
    base = recipe_for(args.split, len(data.train), args.seed, 256)

    if "direct" in args.plans and "direct" not in done:
        spec = resolve_preset("seed-final", pm=pm)
        model = build_model(spec, pm=pm, seed=args.seed)
        recipe = base.with_(epochs=args.direct_epochs,
                            warmup_steps=base.warmup_steps * args.direct_epochs // base.epochs)
        started = time.perf_counter()
        fit(model, data.train, recipe, teacher_logits=logits, progress=False)
        card = count_complexity(model)
        record({"plan": "direct", "start": "seed-final", "epochs": args.direct_epochs,
                "seed": args.seed, "macs": card.macs, "params": card.params,
                "seconds": round(time.perf_counter() - started, 1), "final": scores(model, data)})

    for name, (preset, schedule, chain) in PLANS.items():
        if name not in args.plans or name in done:
            continue
        spec = resolve_preset(preset, pm=pm)
        model = build_model(spec, pm=pm, seed=args.seed)
        stored = work / f"{preset}-kd-{args.wide_epochs}ep-seed{args.seed}.pt"
        started = time.perf_counter()
        if stored.is_file():  # S2 and S3 share one trained 96-wide network
            loaded = load_checkpoint(stored)
            model.load_state_dict(loaded.state_dict)
            wide_seconds = loaded.metadata["seconds"]
        else:
            recipe = base.with_(epochs=args.wide_epochs,
                                warmup_steps=base.warmup_steps * args.wide_epochs // base.epochs)
            fit(model, data.train, recipe, teacher_logits=logits, progress=False)
            model.to("cpu")
            wide_seconds = round(time.perf_counter() - started, 1)
            save_checkpoint(stored, spec=spec, state_dict=model.state_dict(),
                            metadata={"seconds": wide_seconds})
        wide_card, wide_scores = count_complexity(model), scores(model, data)
        plan = PruningPlan(importance=args.metric, schedule=schedule, steps=args.steps, chain=chain,
                           finetune_epochs=args.finetune_epochs, final_finetune_epochs=0)
        started = time.perf_counter()
        result = prune(model, spec, plan, pm=pm, train=data.train, teacher_logits=logits,
                       recipe=base, progress=False)
        model = result.model
        pruned_scores = scores(model, data)
        fit(model, data.train, base.with_(epochs=args.final_epochs, warmup_steps=0),
            teacher_logits=logits, progress=False)
        model.to("cpu")
        record({"plan": name, "start": preset, "start_base": spec.base_channels,
                "schedule": schedule, "chain": list(chain),
                "metric": args.metric, "steps": args.steps, "seed": args.seed,
                "wide_epochs": args.wide_epochs, "finetune_epochs": args.finetune_epochs,
                "final_epochs": args.final_epochs, "wide_seconds": wide_seconds,
                "prune_seconds": round(time.perf_counter() - started, 1),
                "wide": {"macs": wide_card.macs, "params": wide_card.params, **wide_scores},
                "macs": result.card.macs, "params": result.card.params,
                "widths": result.spec.channel_overrides,
                "before_finetune": pruned_scores, "final": scores(model, data)})


def report(path: Path) -> str:
    """A markdown table of the recorded plans."""
    entries = read_results(path)

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    lines = ["| plan | start → final | MACs | params | wide val / test | pruned, before fine-tune "
             "val / test | final val / test | test unseen | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        final = e["final"]
        if e["plan"] == "direct":
            row = [e["plan"], f"seed-final, {e['epochs']} epochs KD", f"{e['macs']:,}",
                   f"{e['params']:,}", "", "",
                   f"{pct(final['validation']['macro'])} / {pct(final['test']['macro'])}",
                   pct(final["test"]["unseen"]), f"{e['seconds'] / 60:.1f}"]
        else:
            wide, before = e["wide"], e["before_finetune"]
            path_text = " → ".join(str(w) for w in [e["start_base"], *e["chain"]])
            row = [e["plan"], f"{path_text} ({e['schedule']}, {e['steps']} steps/stage)",
                   f"{e['macs']:,}", f"{e['params']:,}",
                   f"{pct(wide['validation']['macro'])} / {pct(wide['test']['macro'])}",
                   f"{pct(before['validation']['macro'])} / {pct(before['test']['macro'])}",
                   f"{pct(final['validation']['macro'])} / {pct(final['test']['macro'])}",
                   pct(final["test"]["unseen"]),
                   f"{(e['wide_seconds'] + e['prune_seconds']) / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
