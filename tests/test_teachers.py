"""Teachers see only the split's training clips; their ensemble is cached and reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asc_search.data.dataset import SCENES, load_dataset
from asc_search.errors import PluginError
from asc_search.features.experiment import load_split_data
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager
from asc_search.teachers.ensemble import Teacher, TeacherContext, TeacherFit, ensemble_logits
from asc_search.training.recipe import TrainingRecipe

RECIPE = TrainingRecipe(epochs=1, batch_size=64, warmup_steps=1)


class SpyTeachers:
    """A plugin whose teachers record everything they are given."""

    def __init__(self) -> None:
        self.seen: list[TeacherContext] = []

    @hookimpl
    def asc_teachers(self):
        def fit(context: TeacherContext) -> TeacherFit:
            self.seen.append(context)
            logits = np.eye(10, dtype=np.float32)[context.train.labels] * 4.0
            return TeacherFit(logits=logits)

        def broken(context: TeacherContext) -> TeacherFit:
            return TeacherFit(logits=np.zeros((3, 10)))

        return [Teacher("spy", "records its context", fit),
                Teacher("broken", "wrong number of rows", broken)]


@pytest.fixture
def spy_pm():
    pm = build_plugin_manager(load_entry_points=False)
    spy = SpyTeachers()
    pm.register(spy)
    return pm, spy


@pytest.mark.parametrize("split", [5, 25])
def test_teachers_see_only_the_splits_training_clips(tiny_corpus: Path, tmp_path: Path, spy_pm,
                                                     split: int) -> None:
    pm, spy = spy_pm
    data = load_split_data(str(tiny_corpus), split, pm=pm, cache_dir=tmp_path, progress=False)
    ensemble_logits(data.train, teacher_names=["spy"], pm=pm, cache_dir=tmp_path, recipe=RECIPE)
    (context,) = spy.seen
    dataset = load_dataset(tiny_corpus)
    allowed = set(dataset.split_lists[split]) - set(dataset.validation or ())
    given = set(context.train.files) | set(context.train.features.files)
    assert given == allowed, "a teacher was given a file outside the split's training clips"
    assert not given & set(dataset.test) and not given & set(dataset.validation or ())
    expected = [SCENES.index(dataset.clips[name].scene) for name in context.train.files]
    assert context.train.labels.tolist() == expected
    assert len(context.train.features.array) == len(allowed)  # no hidden extra rows
    assert not any(hasattr(context, name) for name in ("dataset", "validation", "test"))


def test_ensemble_is_cached_and_reused(tiny_corpus: Path, tmp_path: Path, spy_pm) -> None:
    pm, spy = spy_pm
    data = load_split_data(str(tiny_corpus), 5, pm=pm, cache_dir=tmp_path, progress=False)
    first = ensemble_logits(data.train, teacher_names=["spy", "spy"], pm=pm, cache_dir=tmp_path,
                            recipe=RECIPE)
    assert not first.cache_hit and len(spy.seen) == 2 and set(first.per_teacher) == {"spy#0", "spy#1"}
    assert spy.seen[0].recipe.seed == RECIPE.seed != spy.seen[1].recipe.seed  # a seed each
    second = ensemble_logits(data.train, teacher_names=["spy", "spy"], pm=pm, cache_dir=tmp_path,
                             recipe=RECIPE)
    assert second.cache_hit and len(spy.seen) == 2
    np.testing.assert_array_equal(first.logits, second.logits)
    other = ensemble_logits(data.train, teacher_names=["spy"], pm=pm, cache_dir=tmp_path,
                            recipe=RECIPE.with_(epochs=2))
    assert not other.cache_hit  # recipe is part of the key
    (second.directory / "ensemble.npy").write_bytes(b"garbage")
    rebuilt = ensemble_logits(data.train, teacher_names=["spy", "spy"], pm=pm, cache_dir=tmp_path,
                              recipe=RECIPE)
    assert not rebuilt.cache_hit


def test_bad_teachers_are_refused(tiny_corpus: Path, tmp_path: Path, spy_pm) -> None:
    pm, _ = spy_pm
    data = load_split_data(str(tiny_corpus), 5, pm=pm, cache_dir=tmp_path, progress=False)
    with pytest.raises(PluginError, match="unknown teacher 'pass_t'"):
        ensemble_logits(data.train, teacher_names=["pass_t"], pm=pm, cache_dir=tmp_path, recipe=RECIPE)
    with pytest.raises(PluginError, match="returned logits of shape"):
        ensemble_logits(data.train, teacher_names=["broken"], pm=pm, cache_dir=tmp_path, recipe=RECIPE)
    assert not [p for p in (tmp_path / "teachers").iterdir() if p.name.startswith(".")]


def test_logits_file_teacher(tiny_corpus: Path, tmp_path: Path) -> None:
    pm = build_plugin_manager(load_entry_points=False)
    data = load_split_data(str(tiny_corpus), 5, pm=pm, cache_dir=tmp_path, progress=False)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(data.train), 10)).astype(np.float32)
    npz = tmp_path / "passt.npz"
    np.savez(npz, filenames=np.array(data.train.files), logits=table)
    result = ensemble_logits(data.train, teacher_names=[f"logits_file={npz}"], pm=pm,
                             cache_dir=tmp_path, recipe=RECIPE)
    np.testing.assert_allclose(result.logits, table)
    csv = tmp_path / "passt.csv"
    csv.write_text("filename," + ",".join(SCENES) + "\n" + "".join(
        f"{name}," + ",".join(f"{v:.6f}" for v in row) + "\n"
        for name, row in zip(data.train.files[::-1], table[::-1], strict=True)))
    from_csv = ensemble_logits(data.train, teacher_names=[f"logits_file={csv}"], pm=pm,
                               cache_dir=tmp_path, recipe=RECIPE)
    np.testing.assert_allclose(from_csv.logits, table, atol=1e-5)
    np.savez(npz, filenames=np.array(data.train.files[1:]), logits=table[1:])
    with pytest.raises(PluginError, match="no logits for 1 training clip"):
        ensemble_logits(data.train, teacher_names=[f"logits_file={npz}"], pm=pm,
                        cache_dir=tmp_path, recipe=RECIPE)


@pytest.mark.slow
def test_builtin_teachers_fit_and_predict(tiny_corpus: Path, tmp_path: Path) -> None:
    pm = build_plugin_manager(load_entry_points=False)
    data = load_split_data(str(tiny_corpus), 25, pm=pm, cache_dir=tmp_path, progress=False)
    result = ensemble_logits(data.train, teacher_names=["wide_cp_mobile=32", "patchout_transformer"],
                             pm=pm, cache_dir=tmp_path, recipe=RECIPE.with_(batch_size=32),
                             mode="mean_probs", progress=False)
    assert set(result.per_teacher) == {"wide_cp_mobile", "patchout_transformer"}
    assert result.logits.shape == (len(data.train), 10) and np.isfinite(result.logits).all()
    assert (result.directory / "wide_cp_mobile" / "model.pt").is_file()


class Memoriser:
    """A teacher that knows exactly the clips it was fitted on: its model returns the one-hot
    label of a clip it saw and zeros for any other, so its logits show who saw what."""

    def __init__(self) -> None:
        self.fits: list[set[str]] = []

    @hookimpl
    def asc_teachers(self):
        import torch

        def fit(context: TeacherContext) -> TeacherFit:
            self.fits.append(set(context.train.files))
            seen = {context.train.features.batch([row]).numpy().tobytes(): int(label)
                    for row, label in enumerate(context.train.labels)}

            class Lookup(torch.nn.Module):
                def forward(self, x: torch.Tensor) -> torch.Tensor:
                    out = torch.zeros(len(x), 10)
                    for k in range(len(x)):
                        label = seen.get(x[k:k + 1].float().numpy().tobytes())
                        if label is not None:
                            out[k, label] = 1.0
                    return out

            model = Lookup()
            logits = np.eye(10, dtype=np.float32)[context.train.labels]
            return TeacherFit(logits=logits, model=model)

        return [Teacher("memoriser", "knows only the clips it saw", fit)]


def test_out_of_fold_logits_come_from_fits_that_never_saw_the_clip(tiny_corpus: Path,
                                                                     tmp_path: Path) -> None:
    from asc_search.data.dataset import recording_of
    from asc_search.training.train import precision_for

    pm = build_plugin_manager(load_entry_points=False)
    memoriser = Memoriser()
    pm.register(memoriser)
    data = load_split_data(str(tiny_corpus), 100, pm=pm, cache_dir=tmp_path, progress=False)
    # fp32 so the lookup sees the exact cached rows.
    precise = precision_for("cpu", mixed=False)
    plain = ensemble_logits(data.train, teacher_names=["memoriser"], pm=pm, cache_dir=tmp_path,
                            recipe=RECIPE, precision=precise, progress=False)
    assert (plain.logits.argmax(1) == data.train.labels).all()  # memorised: 100 % on its clips
    memoriser.fits.clear()
    fitted: list[TeacherFit] = []
    folded = ensemble_logits(data.train, teacher_names=["memoriser"], pm=pm, cache_dir=tmp_path,
                             recipe=RECIPE, precision=precise, progress=False, folds=4,
                             on_teacher=lambda name, fit: fitted.append(fit))
    # The lookup works: the four fold models together have seen every clip three times.
    from asc_search.training.train import predict

    together = predict(fitted[0].model, data.train.features, precision=precise)
    np.testing.assert_allclose(together[np.arange(len(data.train)), data.train.labels], 0.75)
    assert folded.directory != plain.directory  # its own cache entry
    assert len(memoriser.fits) == 4
    # No clip was scored by a fit that had seen it, nor any clip of its recording.
    assert (folded.logits == 0).all()
    everything = set(data.train.files)
    for seen in memoriser.fits:
        held = everything - seen
        assert held and not {recording_of(n) for n in held} & {recording_of(n) for n in seen}
    # Every clip is held out exactly once.
    assert sum(len(everything - seen) for seen in memoriser.fits) == len(everything)


def test_teacher_quality_shows_a_memoriser_for_what_it_is(tiny_corpus: Path,
                                                          tmp_path: Path) -> None:
    """A teacher that memorised its clips agrees 100 % with their labels and knows nothing of
    validation clips: the two numbers that say whether KD has anything to pass on."""
    from asc_search.teachers.quality import ENSEMBLE_ROW, fit_scored_ensemble, memorised_note
    from asc_search.training.train import precision_for

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(Memoriser())
    data = load_split_data(str(tiny_corpus), 100, pm=pm, cache_dir=tmp_path, progress=False)
    precise = precision_for("cpu", mixed=False)  # the lookup needs the exact cached rows

    def scored():
        return fit_scored_ensemble(data, teacher_names=["memoriser"], pm=pm, cache_dir=tmp_path,
                                   recipe=RECIPE, precision=precise, progress=False)

    fitted = scored()
    assert [q.name for q in fitted.qualities] == ["memoriser", ENSEMBLE_ROW]
    for quality in fitted.qualities:
        assert quality.train_agreement == 1.0
        # It scores every validation clip as zeros, so it names the first class for all of
        # them: the macro accuracy of always answering one class.
        assert quality.validation is not None
        assert quality.validation.macro_accuracy == pytest.approx(1 / len(SCENES))
        low, high = quality.validation.macro_interval
        assert low <= quality.validation.macro_accuracy <= high
    # Full agreement in fold is memory: the commands that fit teachers warn of it.
    assert "memorised" in memorised_note(fitted.qualities[-1].train_agreement)
    cached = scored()
    assert cached.ensemble.cache_hit
    # From the cache, logits only: agreement is known, validation is not (no model to ask).
    (together,) = cached.qualities
    assert together.name == ENSEMBLE_ROW and together.train_agreement == 1.0
    assert together.validation is None


def test_only_in_fold_full_agreement_counts_as_memorised() -> None:
    """The default teacher agrees 98.6 % at split 5 and teaches; 100 % in fold is memory; out
    of fold, full agreement is what the teachers know of clips they never heard."""
    from asc_search.teachers.quality import memorised_note

    assert memorised_note(0.986) is None
    assert "--teacher-epochs" in memorised_note(1.0)
    assert memorised_note(1.0, folds=4) is None


def test_more_folds_than_recordings_is_one_clear_error(tiny_corpus: Path, tmp_path: Path) -> None:
    import dataclasses

    from asc_search.errors import AscSearchError

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(Memoriser())
    data = load_split_data(str(tiny_corpus), 100, pm=pm, cache_dir=tmp_path, progress=False)
    # Twelve clips cut from three recordings: enough clips for four folds, too few recordings.
    twelve = data.train.subset(np.arange(12))
    three = dataclasses.replace(twelve, files=tuple(
        f"airport-lyon-100{k % 3}-4000{k % 3}-{k}-a.wav" for k in range(12)))
    with pytest.raises(AscSearchError, match="only 3 recordings"):
        ensemble_logits(three, teacher_names=["memoriser"], pm=pm, cache_dir=tmp_path,
                        recipe=RECIPE, progress=False, folds=4)


def test_subsets_of_one_cached_list_have_their_own_teacher_entries(tiny_corpus: Path,
                                                                   tmp_path: Path) -> None:
    pm = build_plugin_manager(load_entry_points=False)
    memoriser = Memoriser()
    pm.register(memoriser)
    data = load_split_data(str(tiny_corpus), 100, pm=pm, cache_dir=tmp_path, progress=False)
    rows = np.arange(len(data.train))
    fitted = [ensemble_logits(part, teacher_names=["memoriser"], pm=pm, cache_dir=tmp_path,
                              recipe=RECIPE, progress=False)
              for part in (data.train, data.train.subset(rows[::2]), data.train.subset(rows[1::2]))]
    # Same cached features folder, three different training lists: three fits, three entries.
    assert len({f.directory for f in fitted}) == 3 and len(memoriser.fits) == 3
    assert not any(f.cache_hit for f in fitted)
    again = ensemble_logits(data.train.subset(rows[::2]), teacher_names=["memoriser"], pm=pm,
                            cache_dir=tmp_path, recipe=RECIPE, progress=False)
    assert again.cache_hit and again.directory == fitted[1].directory


def test_a_teacher_fit_cut_short_resumes_from_its_last_epoch(tiny_corpus: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import asc_search.plugins.teachers as builtin

    pm = build_plugin_manager(load_entry_points=False)
    data = load_split_data(str(tiny_corpus), 25, pm=pm, cache_dir=tmp_path, progress=False)
    recipe = TrainingRecipe(epochs=3, batch_size=16, warmup_steps=1)
    whole = ensemble_logits(data.train, teacher_names=["wide_cp_mobile=8"], pm=pm,
                            cache_dir=tmp_path / "whole", recipe=recipe, progress=False)
    real_fit, epochs_run = builtin.fit, []

    class Killed(Exception):
        pass

    def dying_fit(model, train, recipe, **kwargs):
        def on_epoch(epoch: int, loss: float) -> None:
            epochs_run.append(epoch)
            if epochs_run == [1, 2]:
                raise Killed  # the process dies after the teacher's second epoch
        return real_fit(model, train, recipe, on_epoch=on_epoch, **kwargs)

    monkeypatch.setattr(builtin, "fit", dying_fit)
    with pytest.raises(Killed):
        ensemble_logits(data.train, teacher_names=["wide_cp_mobile=8"], pm=pm,
                        cache_dir=tmp_path / "cut", recipe=recipe, progress=False)
    resumed = ensemble_logits(data.train, teacher_names=["wide_cp_mobile=8"], pm=pm,
                              cache_dir=tmp_path / "cut", recipe=recipe, progress=False)
    assert epochs_run == [1, 2, 3], "the second start did not continue after epoch 2"
    np.testing.assert_array_equal(resumed.logits, whole.logits)
    assert not [p for p in (tmp_path / "cut" / "teachers").iterdir() if p.name.startswith(".")]
