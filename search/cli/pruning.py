"""``asc-search prune CHECKPOINT``: prune a trained network to the budget, with KD fine-tuning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from asc_search.cli.shared import (
    Context,
    comma_separated,
    data_options,
    fit_teacher_ensemble,
    pass_context,
    recipe_from_options,
    recipe_options,
    say_note,
    stdout_console,
    teacher_options,
)


@click.command("prune")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--budget-macs", default="30M", show_default=True)
@click.option("--budget-bytes", default="128kB", show_default=True)
@click.option("--metric", "importance", default="l2", show_default=True,
              help="Channel importance (l1, l2, bn_scale, taylor, fpgm, random, or a plugin's).")
@click.option("--schedule", default="agp", show_default=True,
              help="one_shot, linear, agp, progressive, or a plugin's.")
@click.option("--steps", type=int, default=5, show_default=True, help="Pruning steps per stage.")
@click.option("--chain", default=None,
              help="Target base widths, widest first, e.g. 64,32 [default: widest that fits].")
@click.option("--finetune-epochs", type=int, default=2, show_default=True,
              help="KD fine-tune epochs after each intermediate step.")
@click.option("--final-finetune-epochs", type=int, default=10, show_default=True)
@click.option("--round-to", type=int, default=8, show_default=True,
              help="Without --chain: step of the widest base width that fits the budget.")
@click.option("--kd/--no-kd", default=True, show_default=True,
              help="Fine-tune with distillation from the cached teacher ensemble.")
@teacher_options
@data_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Pruned checkpoint [default: CHECKPOINT with -pruned before the suffix].")
@recipe_options
@pass_context
def prune_command(obj: Context, checkpoint: Path, budget_macs: str, budget_bytes: str,
                  importance: str, schedule: str, steps: int, chain: str | None,
                  finetune_epochs: int, final_finetune_epochs: int, round_to: int, kd: bool,
                  teacher_names: tuple[str, ...], teacher_epochs: int | None, ensemble: str,
                  teacher_folds: int, teacher_device_response_p: float,
                  data: str | None, split: str, device: str, out: Path | None,
                  **values: Any) -> None:
    """Prune a trained checkpoint to the budget; print MACs, bytes and accuracy before and after."""
    from asc_search.architecture import build_model
    from asc_search.complexity import count_complexity, parse_budget
    from asc_search.features.experiment import load_split_data
    from asc_search.pruning.prune import PruningPlan, prune
    from asc_search.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from asc_search.training.evaluate import evaluate
    from asc_search.training.train import fit, precision_for, predict

    recipe = recipe_from_options(values)
    loaded = load_checkpoint(checkpoint)
    model = build_model(loaded.spec, pm=obj.pm)
    try:
        model.load_state_dict(loaded.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit its spec") from exc
    plan = PruningPlan(importance=importance, schedule=schedule, steps=steps,
                       chain=comma_separated(int)(chain) or (),
                       max_macs=parse_budget(budget_macs, what="--budget-macs"),
                       max_param_bytes=parse_budget(budget_bytes, what="--budget-bytes"),
                       round_to=round_to, finetune_epochs=finetune_epochs,
                       final_finetune_epochs=0)
    precision = precision_for(device)
    split_data = load_split_data(data, int(split), pm=obj.pm, cache_dir=obj.cache,
                                 progress=not obj.quiet, with_test=False)
    teacher_logits = None
    if kd:
        result, _, note = fit_teacher_ensemble(obj, split_data, teacher_names, teacher_epochs,
                                               ensemble, precision, folds=teacher_folds,
                                               device_response_p=teacher_device_response_p)
        say_note(note)
        teacher_logits = result.logits

    def accuracy() -> float:
        logits = predict(model, split_data.validation.features, precision=precision)
        val = split_data.validation
        return evaluate(logits, val.labels, val.devices, interval=False,
                        classes=val.classes).macro_accuracy

    before_card, before_acc = count_complexity(model), accuracy()
    started = time.perf_counter()
    pruned = prune(model, loaded.spec, plan, pm=obj.pm, train=split_data.train,
                   teacher_logits=teacher_logits, recipe=recipe, precision=precision,
                   progress=not obj.quiet,
                   on_step=lambda s: stdout_console().print(
                       f"stage {s.stage} step {s.step}: ratio {s.ratio:.3f}, {s.macs:,} MACs, "
                       f"{s.params:,} parameters", highlight=False))
    model = pruned.model
    pruned_acc = accuracy()
    if final_finetune_epochs > 0:
        fit(model, split_data.train, recipe.with_(epochs=final_finetune_epochs, warmup_steps=0),
            teacher_logits=teacher_logits, precision=precision, progress=not obj.quiet,
            label="final fine-tune")
        model.to("cpu")
    tuned_acc = accuracy()
    seconds = time.perf_counter() - started
    table = Table("", "MACs", "parameters", "bytes (16-bit)", "validation macro acc %",
                  title=f"pruning {checkpoint.name}: {importance}, {schedule}, {steps} steps")
    table.add_row("before", f"{before_card.macs:,}", f"{before_card.params:,}",
                  f"{before_card.param_bytes:,}", f"{100 * before_acc:.2f}")
    table.add_row("pruned", f"{pruned.card.macs:,}", f"{pruned.card.params:,}",
                  f"{pruned.card.param_bytes:,}", f"{100 * pruned_acc:.2f}")
    table.add_row(f"fine-tuned ({final_finetune_epochs} epochs{', KD' if kd else ''})",
                  f"{pruned.card.macs:,}", f"{pruned.card.params:,}",
                  f"{pruned.card.param_bytes:,}", f"{100 * tuned_acc:.2f}")
    stdout_console().print(table)
    target = out or checkpoint.with_name(f"{checkpoint.stem}-pruned{checkpoint.suffix}")
    save_checkpoint(target, spec=pruned.spec, state_dict=model.state_dict(), metadata={
        **loaded.metadata, "pruning_plan": plan.to_dict() | {"final_finetune_epochs":
                                                             final_finetune_epochs},
        "before_macro_accuracy": before_acc, "pruned_macro_accuracy": pruned_acc,
        "validation_macro_accuracy": tuned_acc, "macs": pruned.card.macs,
        "params": pruned.card.params, "prune_seconds": seconds,
    })
    stdout_console().print(f"pruned checkpoint: {target} ({seconds:.0f} s)", highlight=False)
