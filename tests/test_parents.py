"""Parents: a pruning plan's wide network is trained once and shared by every plan that starts
from it, through the cache folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import asc_search.parents.store as parents
from asc_search.features.experiment import load_split_data
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import wide_and_chain
from asc_search.study.objective import SearchSettings, train_candidate
from asc_search.study.space import read_space, space_from_dict
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import fit as real_fit
from asc_search.training.train import precision_for

PM = build_plugin_manager()


@pytest.fixture(scope="module")
def data(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_split_data(str(tiny_corpus), 100, pm=PM, progress=False,
                           cache_dir=tmp_path_factory.mktemp("cache"))


def _plans():
    """Two plans from the same 32-wide parent (16 → 32 × 2), pruned in different ways."""
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=PM)
    shape = {"base_channels": 16, "channels_multiplier": 1.8, "expansion_rate": 2.1,
             "n_blocks": [2, 2, 1], "stem_factorization": "plain",
             "stage1_factorization": "sequential", "stage2_factorization": "sequential",
             "stage3_factorization": "plain", "prune_width_ratio": 2.0}
    linear = space.candidate({**shape, "importance": "l2", "schedule": "linear",
                              "prune_steps": 2, "prune_stages": 1})
    one_shot = space.candidate({**shape, "importance": "l1", "schedule": "one_shot",
                                "prune_stages": 1})
    settings = SearchSettings(space=raw, space_source=source, proxy_epochs=3,
                              recipe={"batch_size": 32})
    return settings, linear, one_shot


def test_a_second_plan_from_the_same_parent_trains_no_parent(data, tmp_path: Path,
                                                            monkeypatch) -> None:
    settings, linear, one_shot = _plans()
    assert wide_and_chain(linear)[0] == wide_and_chain(one_shot)[0]  # one parent
    parent_fits: list[int] = []

    def counting_fit(model, train, recipe, **kwargs):
        parent_fits.append(kwargs.get("steps"))
        return real_fit(model, train, recipe, **kwargs)

    monkeypatch.setattr(parents, "fit", counting_fit)
    logits = np.random.default_rng(0).normal(size=(len(data.train), 10)).astype(np.float32)

    def train(candidate, seed: int):
        return train_candidate(candidate, settings=settings, pm=PM, train=data.train,
                               validation=data.validation, teacher_logits=logits,
                               precision=precision_for("cpu"), epochs=settings.proxy_epochs,
                               seed=seed, parents=tmp_path)

    first = train(linear, seed=1)
    assert first.parent_trained and len(parent_fits) == 1
    assert len(parents.cached_parents(tmp_path)) == 1
    second = train(one_shot, seed=2)  # another plan, another trial seed: the same parent
    assert not second.parent_trained and len(parent_fits) == 1
    assert first.budget.wide == second.budget.wide
    # The trial that reused the parent spent only its pruning and fine-tunes.
    assert second.training_macs < first.training_macs
    again = train(linear, seed=1)
    assert not again.parent_trained
    assert again.validation.macro_accuracy == pytest.approx(first.validation.macro_accuracy)

    # Other teacher logits make another parent.
    train_candidate(linear, settings=settings, pm=PM, train=data.train,
                    validation=data.validation, teacher_logits=logits + 1.0,
                    precision=precision_for("cpu"), epochs=settings.proxy_epochs, seed=1,
                    parents=tmp_path)
    assert len(parent_fits) == 2 and len(parents.cached_parents(tmp_path)) == 2


def test_workers_wanting_one_parent_at_once_train_it_once(data, tmp_path: Path,
                                                          monkeypatch) -> None:
    """Two workers reach the same parent together: one trains it, the other waits and loads."""
    import threading

    settings, linear, one_shot = _plans()
    fits: list[str] = []
    inside = threading.Event()

    def slow_fit(model, train, recipe, **kwargs):
        fits.append(threading.current_thread().name)
        inside.set()  # the second worker asks while this one trains
        threading.Event().wait(1.0)
        return real_fit(model, train, recipe, **kwargs)

    monkeypatch.setattr(parents, "fit", slow_fit)
    logits = np.random.default_rng(0).normal(size=(len(data.train), 10)).astype(np.float32)
    outcomes: dict[str, object] = {}

    def worker(name: str, candidate, seed: int) -> None:
        outcomes[name] = train_candidate(
            candidate, settings=settings, pm=PM, train=data.train, validation=data.validation,
            teacher_logits=logits, precision=precision_for("cpu"),
            epochs=settings.proxy_epochs, seed=seed, parents=tmp_path)

    first = threading.Thread(target=worker, args=("first", linear, 1), name="first")
    second = threading.Thread(target=worker, args=("second", one_shot, 2), name="second")
    first.start()
    assert inside.wait(timeout=120)
    second.start()
    first.join(timeout=300)
    second.join(timeout=300)
    assert fits == ["first"]
    assert outcomes["first"].parent_trained and not outcomes["second"].parent_trained
    assert len(parents.cached_parents(tmp_path)) == 1


def test_a_parent_cut_short_resumes_from_its_last_epoch(data, tmp_path: Path,
                                                         monkeypatch) -> None:
    """A parent whose worker dies mid-fit continues from its last epoch the next time it is
    asked for, and ends with the weights an uninterrupted fit gives."""
    import torch

    from asc_search.architecture import ArchSpec

    spec, precision = ArchSpec(base_channels=8), precision_for("cpu")
    recipe = TrainingRecipe(epochs=1, batch_size=64, warmup_steps=2, seed=5)
    logits = np.random.default_rng(1).normal(size=(len(data.train), 10)).astype(np.float32)
    steps = 4 * -(-len(data.train) // 64)  # four epochs

    def parent(cache: Path):
        return parents.trained_parent(spec, pm=PM, recipe=recipe, steps=steps, train=data.train,
                                      teacher_logits=logits, precision=precision, cache=cache)

    whole, _, nothing_restored = parent(tmp_path / "whole")
    assert nothing_restored == 0.0
    epochs_run: list[int] = []

    class Killed(Exception):
        pass

    def dying_fit(model, train, recipe, **kwargs):
        def on_epoch(epoch: int, loss: float) -> None:
            epochs_run.append(epoch)
            if epoch == 2 and len(epochs_run) == 2:
                raise Killed  # the worker dies after its second epoch
        return real_fit(model, train, recipe, on_epoch=on_epoch, **kwargs)

    monkeypatch.setattr(parents, "fit", dying_fit)
    with pytest.raises(Killed):
        parent(tmp_path / "cut")
    (resume,) = (tmp_path / "cut" / parents.PARENTS_FOLDER).glob("*.pt.resume")
    assert not parents.cached_parents(tmp_path / "cut")  # no half-trained parent is served
    resumed, hit, restored_cpu = parent(tmp_path / "cut")
    assert not hit and epochs_run == [1, 2, 3, 4], "the second start did not skip epochs 1-2"
    # The two epochs the dead worker paid for are still charged to the parent.
    assert restored_cpu > 0
    (kept,) = parents.cached_parents(tmp_path / "cut")
    # Process time against process time: wall seconds can be fewer than CPU seconds when the
    # fit runs on several threads. The kept figure is rounded to a tenth.
    assert kept.cpu_seconds >= restored_cpu - 0.05
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert not resume.exists() and len(parents.cached_parents(tmp_path / "cut")) == 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_an_unusable_parent_file_is_trained_again_never_unpickled(data, tmp_path: Path,
                                                                  caplog) -> None:
    settings, linear, _ = _plans()
    logits = np.zeros((len(data.train), 10), dtype=np.float32)

    def train():
        return train_candidate(linear, settings=settings, pm=PM, train=data.train,
                               validation=data.validation, teacher_logits=logits,
                               precision=precision_for("cpu"), epochs=settings.proxy_epochs,
                               parents=tmp_path)

    assert train().parent_trained
    (path,) = (tmp_path / parents.PARENTS_FOLDER).glob("*.pt")
    import pickle

    path.write_bytes(pickle.dumps({"format": "not ours"}))
    with caplog.at_level("WARNING"):
        assert train().parent_trained
    assert "unusable" in caplog.text and path.name in caplog.text
    assert not train().parent_trained  # the file was replaced by a good one


def test_parents_list_and_build_from_the_command_line(cli, tiny_corpus: Path,
                                                      tmp_path: Path) -> None:
    cache, studies = tmp_path / "cache", tmp_path / "studies"
    empty = cli("--cache", cache, "parents", "list")
    assert empty.code == 0 and "no cached parents" in empty.out
    made = cli("--cache", cache, "-q", "run", "--data", tiny_corpus, "--split", "100",
               "--studies", studies, "--study", "p", "--trials", "1", "--promote", "0",
               "--proxy-epochs", "2", "--teacher-epochs", "1", "--batch-size", "64")
    assert made.code == 0, made.err  # the baseline ran; S1, S2 and S3 wait in the queue
    built = cli("--cache", cache, "-q", "parents", "build", "p", "--studies", studies)
    assert built.code == 0, built.err
    lines = [line for line in built.out.splitlines() if line.startswith("parent of trial")]
    # S1 starts 64 wide, S2 and S3 share one 96-wide parent: two parents for three plans.
    assert len(lines) == 2 and all("trained in" in line for line in lines)
    again = cli("--cache", cache, "-q", "parents", "build", "p", "--studies", studies)
    assert again.out.count("cached already") == 2
    listed = cli("--cache", cache, "parents", "list")
    assert listed.out.count("sscp_mobile") == 2 and " 96 " in listed.out
