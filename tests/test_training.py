"""The training engine: augmentations, the loop, KD loss, evaluation, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asc_search.architecture import ArchSpec, build_model
from asc_search.errors import AscSearchError
from asc_search.features.experiment import load_split_data
from asc_search.plugin_manager import build_plugin_manager
from asc_search.training.augment import freq_mixstyle, mask_along, time_roll
from asc_search.training.evaluate import (
    bootstrap_interval,
    bootstrap_macro,
    evaluate,
    paired_difference,
)
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import (
    ONEDNN_ISA_LIMITS,
    fit,
    kd_loss,
    precision_for,
    predict,
    warmup_cosine,
)

PM = build_plugin_manager(load_entry_points=False)
SMALL = ArchSpec(base_channels=16, n_blocks=(1, 1, 1), strides={"b2": (2, 2), "b3": (2, 1)})
QUICK = TrainingRecipe(epochs=2, batch_size=32, warmup_steps=2)


@pytest.fixture(scope="module")
def split_data(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("cache")
    return load_split_data(str(tiny_corpus), 100, pm=PM, cache_dir=cache, progress=False)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_time_roll_rolls_each_clip_within_bounds() -> None:
    x = torch.arange(4 * 65, dtype=torch.float32).view(4, 1, 1, 65).expand(4, 1, 3, 65).contiguous()
    rolled = time_roll(x, 6, _generator())
    shifts = []
    for k in range(4):
        matches = [s for s in range(-6, 7) if torch.equal(rolled[k], torch.roll(x[k], s, dims=-1))]
        assert len(matches) == 1, "each clip is a roll of itself by at most ±6 frames"
        shifts.append(matches[0])
    assert len(set(shifts)) > 1  # per-clip shifts
    assert torch.equal(time_roll(x, 0, _generator()), x)


def test_freq_mixstyle_mixes_per_frequency_statistics() -> None:
    x = torch.randn(8, 1, 16, 65) * torch.linspace(0.5, 3, 8).view(8, 1, 1, 1)
    assert torch.equal(freq_mixstyle(x, p=0.0, alpha=0.3, generator=_generator()), x)
    mixed = freq_mixstyle(x, p=1.0, alpha=0.3, generator=_generator())
    assert mixed.shape == x.shape and not torch.allclose(mixed, x)
    # The normalised content is kept: per-clip, per-frequency patterns stay perfectly correlated.
    a = (x[0, 0, 3] - x[0, 0, 3].mean()) / x[0, 0, 3].std()
    b = (mixed[0, 0, 3] - mixed[0, 0, 3].mean()) / mixed[0, 0, 3].std()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    again = freq_mixstyle(x, p=1.0, alpha=0.3, generator=_generator())
    torch.testing.assert_close(again, mixed)


def test_masks_zero_one_band_per_clip() -> None:
    x = torch.ones(16, 1, 256, 65)
    masked = mask_along(x, max_width=48, axis=2, generator=_generator())
    zero_bins = (masked[:, 0, :, 0] == 0).sum(dim=1)
    assert zero_bins.max() <= 48 and zero_bins.float().std() > 0  # per-clip widths
    for k in range(16):  # contiguous band
        rows = torch.nonzero(masked[k, 0, :, 0] == 0).flatten()
        if len(rows):
            assert rows[-1] - rows[0] + 1 == len(rows)
    timed = mask_along(x, max_width=10, axis=3, generator=_generator())
    assert ((timed[:, 0, 0, :] == 0).sum(dim=1) <= 10).all()


def test_masks_are_silence_before_mixstyle_as_in_the_baseline() -> None:
    from asc_search.training.augment import augment

    torch.manual_seed(0)
    x = torch.randn(8, 1, 256, 65)
    silence = math.log(1e-5)
    plain = TrainingRecipe(roll_seconds=0, mixstyle_p=0, freq_mask_bins=48)
    masked = augment(x, plain, frames_per_second=64, generator=_generator())
    # A masked mel bin is silence on the log scale (mel power 0 → log(0 + 1e-5)), not 0.0.
    constant = (masked[:, 0] == silence).all(dim=-1)
    assert constant.any() and not (masked == 0).any()
    # The masks come before Freq-MixStyle, which re-scales the silent band with the mixed
    # per-frequency statistics: a masked band ends at each clip's own mixed mean.
    mixed = augment(x, plain.with_(mixstyle_p=1.0), frames_per_second=64,
                    generator=_generator())
    flat = mixed[:, 0].std(dim=-1) < 1e-4
    assert flat.any()
    values = mixed[:, 0, :, 0][flat]
    assert not torch.isclose(values, torch.tensor(silence)).all()
    assert not (values == 0).any()


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, total=100, warmup=10) == pytest.approx(0.1)
    assert warmup_cosine(9, total=100, warmup=10) == pytest.approx(1.0)
    assert warmup_cosine(55, total=100, warmup=10) == pytest.approx(0.5)
    assert warmup_cosine(99, total=100, warmup=10) < 0.01


def test_warmup_never_exceeds_half_the_run() -> None:
    from asc_search.training.train import effective_warmup

    assert effective_warmup(2000, 4200) == 2000  # real 5 % split, 150 epochs: as published
    assert effective_warmup(2000, 300) == 150  # embedded 5 % split: capped


def _cpjku_kd_by_hand(student: np.ndarray, labels: np.ndarray, teacher: np.ndarray, *,
                     temperature: float, label_weight: float) -> float:
    """CP-JKU's DCASE KD loss written out element by element (their ex_dcase.py): label loss
    weighted by kd_lambda, KL between log-softmaxed teacher and student at T, element-wise,
    averaged over batch and classes, times T²."""
    def log_softmax(row: np.ndarray) -> np.ndarray:
        shifted = row - row.max()
        return shifted - np.log(np.exp(shifted).sum())

    batch, classes = student.shape
    ce = sum(-log_softmax(student[b])[labels[b]] for b in range(batch)) / batch
    kl = 0.0
    for b in range(batch):
        log_t = log_softmax(teacher[b] / temperature)
        log_s = log_softmax(student[b] / temperature)
        for c in range(classes):
            kl += np.exp(log_t[c]) * (log_t[c] - log_s[c])
    kl /= batch * classes
    return label_weight * ce + (1 - label_weight) * kl * temperature**2


def test_kd_loss_is_the_cpjku_formula() -> None:
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 10)) * 3, rng.normal(size=(5, 10)) * 3
    labels = rng.integers(0, 10, 5)
    expected = _cpjku_kd_by_hand(student, labels, teacher, temperature=2, label_weight=0.02)
    got = kd_loss(torch.tensor(student), torch.tensor(labels), torch.tensor(teacher),
                  temperature=2, weight=0.98)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # With weight 0 it is plain cross-entropy.
    torch.testing.assert_close(kd_loss(torch.tensor(student), torch.tensor(labels),
                                       torch.tensor(teacher), temperature=2, weight=0.0),
                               F.cross_entropy(torch.tensor(student), torch.tensor(labels)))


@pytest.mark.parametrize(("capabilities", "autocast"), [
    ({"avx2": True, "avx512_bf16": True}, torch.bfloat16),
    ({"avx2": True, "amx_bf16": True}, torch.bfloat16),
    ({"avx2": True, "avx512_f": True}, None),  # AVX-512 without BF16: bf16 would be emulated
    ({"avx2": True}, None),
])
def test_cpu_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, capabilities: dict,
                                                          autocast) -> None:
    for name in ONEDNN_ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    precision = precision_for("cpu")
    assert precision.autocast_dtype == autocast and precision.channels_last
    assert precision_for("cpu", mixed=False).autocast_dtype is None
    assert not precision_for("cpu", mixed=False).channels_last


@pytest.mark.parametrize(("variable", "limit", "autocast"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", None),  # the CPU has AMX, oneDNN may not use it: emulated bf16
    ("DNNL_MAX_CPU_ISA", "avx512_core", None),  # the former name, any case
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", torch.bfloat16),
    ("ONEDNN_MAX_CPU_ISA", "ALL", torch.bfloat16),
])
def test_cpu_precision_respects_a_cap_on_onednns_instruction_set(monkeypatch, variable: str,
                                                                  limit: str, autocast) -> None:
    """The hardware has bf16, but a user's ``ONEDNN_MAX_CPU_ISA`` decides whether convolutions
    get it: under AVX2 a bf16 step ran at 0.11× of fp32 on an AMX Xeon."""
    for name in ONEDNN_ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"avx2": True, "avx512_bf16": True, "amx_bf16": True})
    monkeypatch.setenv(variable, limit)
    assert precision_for("cpu").autocast_dtype == autocast


def test_cuda_gets_bf16_only_where_the_gpu_computes_it(monkeypatch) -> None:
    """A V100 or T4 reports bf16 when emulation counts (issue 31); fp16 with a scaler is its
    fast path. No GPU is needed: only the choice is checked."""
    import torch

    def emulating_gpu(including_emulation: bool = True) -> bool:  # a V100's answers
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu)
    old_gpu = precision_for("cuda")
    assert (old_gpu.autocast_dtype, old_gpu.scale_gradients) == (torch.float16, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    native = precision_for("cuda")
    assert (native.autocast_dtype, native.scale_gradients) == (torch.bfloat16, False)


def test_fit_learns_and_is_deterministic(split_data) -> None:
    recipe = TrainingRecipe(epochs=6, batch_size=32, warmup_steps=3, learning_rate=0.01)
    first = build_model(SMALL, pm=PM, seed=0)
    history = fit(first, split_data.train, recipe, progress=False)
    assert len(history.losses) == 6 and history.losses[-1] < history.losses[0]
    second = build_model(SMALL, pm=PM, seed=0)
    fit(second, split_data.train, recipe, progress=False)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    logits = predict(first, split_data.validation.features)
    assert logits.shape == (len(split_data.validation), 10) and np.isfinite(logits).all()


def test_fit_with_kd_follows_the_teacher(split_data) -> None:
    """Teacher logits that always point at one class pull the student there, labels or not."""
    teacher = np.full((len(split_data.train), 10), -5.0, dtype=np.float32)
    teacher[:, 3] = 5.0
    model = build_model(SMALL, pm=PM)
    recipe = TrainingRecipe(epochs=8, batch_size=32, warmup_steps=2, learning_rate=0.01,
                            kd_weight=1.0, mixstyle_p=0, freq_mask_bins=0)
    fit(model, split_data.train, recipe, teacher_logits=teacher, progress=False)
    predicted = predict(model, split_data.validation.features).argmax(1)
    assert (predicted == 3).mean() > 0.9


def test_on_epoch_callback_can_stop_training(split_data) -> None:
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(epoch: int, loss: float) -> None:
        seen.append((epoch, loss))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit(build_model(SMALL, pm=PM), split_data.train, QUICK.with_(epochs=5),
            on_epoch=on_epoch, progress=False)
    assert [epoch for epoch, _ in seen] == [1, 2] and all(math.isfinite(loss) for _, loss in seen)


def test_evaluate_macro_device_and_class_figures() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])
    logits = np.eye(10)[predicted]
    devices = ["a", "a", "s4", "a", "s4", "b"]
    result = evaluate(logits, labels, devices)
    assert result.per_class == {"airport": pytest.approx(2 / 3), "bus": 1.0, "metro": 0.0}
    assert result.macro_accuracy == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.per_device["a"] == pytest.approx(1.0) and result.per_device["b"] == 0.0
    assert result.per_device["s4"] == pytest.approx(0.5)
    assert result.seen == pytest.approx(0.5) and result.unseen == pytest.approx(0.5)
    assert result.confusion[0, 1] == 1 and result.confusion.sum() == 6
    # Each device's figure carries its own interval (what the report's per-device bars show).
    assert set(result.per_device_interval) == set(result.per_device)
    low, high = result.per_device_interval["s4"]
    assert low <= result.per_device["s4"] <= high and high - low > 0
    assert result.per_device_interval["b"] == (0.0, 0.0)  # one clip, wrong in every draw
    assert evaluate(logits, labels, devices, interval=False).per_device_interval == {}


def _correlated_clips(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """60 recordings of 10 clips, one scene each, right or wrong as a whole recording."""
    rng = np.random.default_rng(seed)
    files = [f"park-lyon-1000-{r * 10}-{c}-a.wav" for r in range(60) for c in range(10)]
    labels = np.repeat(np.arange(60) % 10, 10)
    correct = np.repeat(rng.random(60) < 0.5, 10)
    return labels, correct, files


def test_the_interval_resamples_recordings_not_clips() -> None:
    labels, correct, files = _correlated_clips()
    logits = np.eye(10)[np.where(correct, labels, (labels + 1) % 10)]
    by_clip = evaluate(logits, labels, ["a"] * len(labels)).macro_interval
    by_recording = evaluate(logits, labels, ["a"] * len(labels), files=files).macro_interval
    # Ten clips that are right or wrong together are one observation, not ten: the honest
    # interval is about sqrt(10) times wider than a clip bootstrap's.
    assert (by_recording[1] - by_recording[0]) > 2.5 * (by_clip[1] - by_clip[0])
    macro = evaluate(logits, labels, ["a"] * len(labels)).macro_accuracy
    assert by_recording[0] < macro < by_recording[1]
    assert np.isnan(evaluate(logits, labels, ["a"] * len(labels), interval=False)
                    .macro_interval[0])


def test_bootstrap_draws_centre_on_the_observed_macro_accuracy() -> None:
    labels, correct, files = _correlated_clips(1)
    draws = bootstrap_macro(labels, [correct], groups=files, resamples=2000)
    observed = evaluate(np.eye(10)[np.where(correct, labels, (labels + 1) % 10)], labels,
                        ["a"] * len(labels), interval=False).macro_accuracy
    assert abs(draws.mean() - observed) < 0.01
    # Chunking the weights changes nothing but memory.
    import asc_search.training.evaluate as module

    whole = bootstrap_interval(labels, correct, groups=files)
    old, module._CHUNK_CELLS = module._CHUNK_CELLS, 500
    try:
        assert bootstrap_interval(labels, correct, groups=files) == whole
    finally:
        module._CHUNK_CELLS = old


def test_a_paired_difference_is_shown_where_two_intervals_overlap() -> None:
    labels, correct, files = _correlated_clips(2)
    better = correct.copy()
    missed = np.flatnonzero(~correct[::10])[:4]
    for recording in missed:  # right on four more recordings, as good elsewhere
        better[recording * 10:(recording + 1) * 10] = True
    a = bootstrap_interval(labels, better, groups=files)
    b = bootstrap_interval(labels, correct, groups=files)
    assert a[0] < b[1]  # the two intervals overlap...
    paired = paired_difference(labels, better, correct, groups=files)
    assert paired["difference"] > 0 and paired["low"] > 0  # ...the paired one excludes 0
    same = paired_difference(labels, correct, correct, groups=files)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_mixup_changes_training_but_not_the_keys_of_recipes_without_it(split_data) -> None:
    # Cached teachers and parents are keyed by ``to_dict``: a recipe without mixup keeps its key.
    assert "mixup_alpha" not in TrainingRecipe().to_dict()
    assert TrainingRecipe(mixup_alpha=0.3).to_dict()["mixup_alpha"] == 0.3
    with pytest.raises(AscSearchError, match="mixup_alpha"):
        TrainingRecipe(mixup_alpha=-1).validate()
    recipe = TrainingRecipe(epochs=3, batch_size=32, warmup_steps=2, learning_rate=0.01)
    plain, mixed = build_model(SMALL, pm=PM, seed=0), build_model(SMALL, pm=PM, seed=0)
    fit(plain, split_data.train, recipe, progress=False)
    history = fit(mixed, split_data.train, recipe.with_(mixup_alpha=0.4), progress=False)
    assert all(np.isfinite(history.losses))
    name = next(iter(plain.state_dict()))
    assert not torch.equal(plain.state_dict()[name], mixed.state_dict()[name])


def test_training_with_device_responses_changes_the_fit_and_stays_deterministic(split_data) -> None:
    # Device impulse-response augmentation (device_responses.py) on device-a clips of the split.
    train = split_data.train.subset(np.arange(128))
    recipe = TrainingRecipe(epochs=1, batch_size=32, warmup_steps=2, learning_rate=0.01)
    coloured = recipe.with_(device_response_p=0.6)
    plain, first, second = (build_model(SMALL, pm=PM, seed=0) for _ in range(3))
    fit(plain, train, recipe, progress=False)
    fit(first, train, coloured, progress=False)
    fit(second, train, coloured, progress=False)
    name = next(iter(plain.state_dict()))
    assert not torch.equal(plain.state_dict()[name], first.state_dict()[name])
    assert torch.equal(first.state_dict()[name], second.state_dict()[name])


def test_a_fit_with_ema_decay_returns_the_moving_average_of_its_steps(split_data) -> None:
    """``ema_decay``: the network a fit returns is the average of the weights after each step,
    the decay ramping up as (1 + n) / (10 + n); BatchNorm's statistics are averaged too."""
    assert "ema_decay" not in TrainingRecipe().to_dict()  # older cache keys stand
    assert TrainingRecipe(ema_decay=0.99).to_dict()["ema_decay"] == 0.99
    for wrong in (-0.1, 1.0):
        with pytest.raises(AscSearchError, match="ema_decay"):
            TrainingRecipe(ema_decay=wrong).validate()
    train = split_data.train.subset(np.arange(96))  # three whole batches an epoch
    recipe = TrainingRecipe(epochs=3, batch_size=32, warmup_steps=2, learning_rate=0.01)
    averaged = build_model(SMALL, pm=PM, seed=0)
    steps: list[dict[str, torch.Tensor]] = []
    fit(averaged, train, recipe.with_(ema_decay=0.8), progress=False,
        on_step=lambda taken: steps.append({name: value.detach().clone() for name, value
                                            in averaged.state_dict().items()}))
    assert len(steps) == 9
    expected = dict(steps[0])
    for n, state in enumerate(steps[1:], start=1):
        decay = min(0.8, (1 + n) / (10 + n))
        expected = {name: torch.lerp(expected[name], value, 1 - decay)
                    if value.is_floating_point() else value for name, value in state.items()}
    final = averaged.state_dict()
    for name, value in expected.items():
        assert torch.allclose(final[name], value, atol=1e-6), name
    assert any("running_mean" in name for name in expected)
    # The last step's weights are not what it returns.
    name = next(n for n, v in final.items() if v.is_floating_point())
    assert not torch.allclose(final[name], steps[-1][name])


def _fit_killed_after(epoch: int, train, recipe: TrainingRecipe, *, resume: Path,
                      **kwargs) -> None:
    """A fit of the small network (seed 0) that dies at the end of ``epoch``, as a killed
    process would, leaving its ``resume`` file behind."""

    class Killed(Exception):
        pass

    def die(done: int, loss: float) -> None:
        if done == epoch:
            raise Killed

    with pytest.raises(Killed):
        fit(build_model(SMALL, pm=PM, seed=0), train, recipe, progress=False, resume=resume,
            on_epoch=die, **kwargs)


def test_a_fit_cut_short_resumes_as_the_same_run(split_data, tmp_path: Path) -> None:
    """Killed after epoch 2 and started again with ``resume``, a fit (mixup, masks, MixStyle
    and KD all drawing random numbers, and a weight average carried across the epochs) ends
    with the uninterrupted run's weights."""
    recipe = TrainingRecipe(epochs=4, batch_size=32, warmup_steps=2, learning_rate=0.01,
                            mixup_alpha=0.3, mixstyle_p=0.5, ema_decay=0.9)
    teacher = np.random.default_rng(0).normal(size=(len(split_data.train), 10)).astype(np.float32)
    whole = build_model(SMALL, pm=PM, seed=0)
    expected = fit(whole, split_data.train, recipe, teacher_logits=teacher, progress=False)

    resume = tmp_path / "run.resume"
    _fit_killed_after(2, split_data.train, recipe, resume=resume, teacher_logits=teacher)
    assert resume.is_file()
    again = build_model(SMALL, pm=PM, seed=0)
    history = fit(again, split_data.train, recipe, teacher_logits=teacher, progress=False,
                  resume=resume)
    assert history.losses == pytest.approx(expected.losses)
    for (name, a), b in zip(whole.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # Another run's resume file is ignored, not continued: that run is as if started afresh.
    shorter = recipe.with_(epochs=3)
    fresh, other = build_model(SMALL, pm=PM, seed=0), build_model(SMALL, pm=PM, seed=0)
    fit(fresh, split_data.train, shorter, teacher_logits=teacher, progress=False)
    fit(other, split_data.train, shorter, teacher_logits=teacher, progress=False, resume=resume)
    for (name, a), b in zip(fresh.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_resumed_fit_restores_the_gpu_generators_too(split_data, tmp_path: Path,
                                                        monkeypatch) -> None:
    """Issue 31: only the CPU generator was kept. Checked without a GPU: the saved state of
    two pretended GPUs is written and handed back on resume."""
    import torch

    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    recipe = TrainingRecipe(epochs=2, batch_size=32, warmup_steps=0)

    resume = tmp_path / "run.resume"
    _fit_killed_after(1, split_data.train, recipe, resume=resume)
    fit(build_model(SMALL, pm=PM, seed=0), split_data.train, recipe, progress=False,
        resume=resume)
    assert len(restored) == 1
    assert all(torch.equal(a, b) for a, b in zip(restored[0], states, strict=True))
