"""Training throughput: the DCASE baseline's per-batch work versus asc-search's training loop.

One command: ``python benchmarks/train_throughput.py [--data NAME|DIR] [--batches 12]``. In one
process, on the same model (the DCASE baseline spec) and batch size (256), it measures samples/s of

(a) the reference: what the DCASE 2024 baseline does every batch — waveforms already in memory,
    roll, resample 44.1 → 32 kHz, log-mel, Freq-MixStyle, frequency masking, fp32 train step;
(b) asc-search's ``fit``: cached features, the same augmentations, KD from cached logits, at the
    precision asc-search picks for this CPU (channels-last; bf16 autocast only where the CPU has
    native bf16);
(c) the bare model step at asc-search's precision on a batch already in memory;
(d) the bare model step in fp32, fp32 + channels-last and bf16 autocast + channels-last, so the
    precision choice is checked on the machine at hand;

and prints b/a (target ≥ 4), b/c (target ≥ 0.9) and (d) as ratios to fp32.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from asc_search.architecture import ArchSpec, build_model
from asc_search.data.audio import read_clip
from asc_search.data.dataset import load_dataset
from asc_search.data.source import resolve_data
from asc_search.features.logmel import FrontEndSettings, LogMelFrontEnd, build_features
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.training.augment import freq_mixstyle, mask_along
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import Precision, fit, labelled_set, precision_for


def reference_rate(waves: torch.Tensor, labels: torch.Tensor, batch: int, batches: int) -> float:
    """(a) The DCASE baseline's per-batch recipe in fp32 (the audio is already in memory)."""
    front_end = LogMelFrontEnd(FrontEndSettings())  # resample 44.1 → 32 kHz, mel, log
    model = build_model(ArchSpec(), pm=build_plugin_manager())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    started = None
    for step in range(batches + 1):  # the first batch warms up and is not timed
        if step == 1:
            started = time.perf_counter()
        rows = torch.randint(0, len(waves), (batch,), generator=generator)
        x = waves[rows]
        shift = int(torch.randint(-4410, 4411, (), generator=generator))
        x = torch.roll(x, shift, dims=-1)  # the baseline rolls the waveform by up to ±0.1 s
        x = front_end(x, 44_100).unsqueeze(1)
        x = freq_mixstyle(x, p=0.4, alpha=0.3, generator=generator)
        x = mask_along(x, max_width=48, axis=2, generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * batches / (time.perf_counter() - started)


def bare_rate(batch: int, batches: int, precision: Precision | None = None) -> float:
    """(c, d) Model step only, at ``precision`` (asc-search's for this CPU by default), on one
    batch already in memory."""
    precision = precision or precision_for("cpu")
    layout = torch.channels_last if precision.channels_last else torch.contiguous_format
    model = build_model(ArchSpec(), pm=build_plugin_manager()).to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=1e-4)
    x = torch.randn(batch, 1, 256, 65).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    model.train()
    started = None
    for step in range(batches + 1):
        if step == 1:
            started = time.perf_counter()
        with precision.autocast():
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * batches / (time.perf_counter() - started)


def project_rate(train, batch: int, batches: int) -> float:
    """(b) asc-search's fit over ``batches`` full batches with augmentation and KD."""
    rows = np.arange(batch * (batches + 1)) % len(train)
    teacher = np.random.default_rng(0).normal(size=(len(train), 10)).astype(np.float32)
    recipe = TrainingRecipe(epochs=1, batch_size=batch, warmup_steps=10)
    model = build_model(ArchSpec(), pm=build_plugin_manager())
    subset = train.subset(rows)  # repeated rows: a fixed batch count from a short file list
    history = fit(model, subset, recipe, teacher_logits=teacher[rows], progress=False)
    # Time per epoch includes the first (warm-up) batch; remove its share like (a) and (c) do.
    return batch * batches / (history.seconds[0] * batches / (batches + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    cache = cache_dir()
    root = resolve_data(args.data, pm=build_plugin_manager(), cache_dir=cache)
    dataset = load_dataset(root)
    files = dataset.split(100).train[: 4 * args.batch]
    features = build_features(files, root=root, cache_dir=cache)
    train = labelled_set(dataset, features)
    waves = torch.from_numpy(np.stack([read_clip(root / f).samples for f in files]))
    labels = torch.from_numpy(train.labels)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.batches} timed batches each")
    a = reference_rate(waves, labels, args.batch, args.batches)
    print(f"(a) DCASE baseline recipe (resample + log-mel + fp32 step): {a:7.1f} samples/s")
    b = project_rate(train, args.batch, args.batches)
    print(f"(b) asc-search fit (cached features, augmentation, KD):     {b:7.1f} samples/s")
    chosen = precision_for("cpu")
    c = bare_rate(args.batch, args.batches)
    print(f"(c) bare model step at asc-search's precision "
          f"({chosen.autocast_dtype or 'fp32'}, channels-last):   {c:7.1f} samples/s")
    print(f"b/a = {b / a:.2f}  (target ≥ 4)")
    print(f"b/c = {b / c:.2f}  (target ≥ 0.9)")
    cpu = torch.device("cpu")
    variants = {"fp32": Precision(cpu, None, False, False),
                "fp32 + channels-last": Precision(cpu, None, True, False),
                "bf16 autocast + channels-last": Precision(cpu, torch.bfloat16, True, False)}
    rates = {name: bare_rate(args.batch, args.batches, p) for name, p in variants.items()}
    for name, rate in rates.items():
        print(f"(d) bare step, {name:30s} {rate:7.1f} samples/s  "
              f"({rate / rates['fp32']:.2f}× fp32)")


if __name__ == "__main__":
    main()
