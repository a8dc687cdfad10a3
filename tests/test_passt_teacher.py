"""The PaSST teacher: PaSST's own package, its own cached front-end, weights read tensor-only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asc_search.data.audio import read_clip
from asc_search.features.experiment import load_split_data
from asc_search.plugin_manager import build_plugin_manager
from asc_search.plugins import passt
from asc_search.teachers.ensemble import ensemble_logits
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import precision_for
from conftest import one_line_error

PM = build_plugin_manager(load_entry_points=False)


def test_passt_features_are_the_packages_own_and_cached(tiny_corpus: Path, tmp_path: Path) -> None:
    import torchaudio
    from hear21passt.models.preprocess import AugmentMelSTFT

    data = load_split_data(str(tiny_corpus), 25, pm=PM, cache_dir=tmp_path, progress=False)
    settings = passt.PasstFrontEndSettings()
    rows = np.array([1, 3])
    first = data.train.features.subset(rows).computed_with(settings, n_jobs=1)
    assert first.files == tuple(data.train.files[r] for r in rows)
    assert first.array.shape == (2, *settings.shape) == (2, 128, 100)
    assert first.origin.files == data.train.files, "computed from anything but its own clips"
    clip = read_clip(tiny_corpus / first.files[1], expected_seconds=1.0)
    audio = torchaudio.functional.resample(torch.from_numpy(clip.samples), clip.sample_rate,
                                           32_000)[:32_000]
    reference = AugmentMelSTFT(n_mels=128, sr=32_000, win_length=800, hopsize=320, n_fft=1024,
                               freqm=0, timem=0, fmin=0.0, fmax=15_500).eval()(audio[None])[0]
    np.testing.assert_allclose(first.array[1].astype(np.float32), reference.numpy(), atol=2e-2)
    again = data.train.features.computed_with(settings, n_jobs=1)
    assert again.cache_hit and again.directory == first.directory


def test_passt_loads_a_tensor_only_state_dict_and_replaces_its_heads(tmp_path: Path) -> None:
    pretrained = passt.build_passt(n_classes=10, seed=1)
    path = tmp_path / "passt-s.pt"
    torch.save(pretrained.state_dict(), path)
    network = passt.passt_teacher_network(str(path), n_classes=10, seed=0)
    block = "blocks.0.attn.qkv.weight"
    assert torch.equal(network.passt.state_dict()[block], pretrained.state_dict()[block])
    assert network.passt.head[-1].out_features == 10 == network.passt.head_dist.out_features
    logits = network.eval()(torch.zeros(2, 1, 128, 100))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("layout", ["plain", "wrapped_with_flat_projection"])
def test_passt_loads_a_release_file_as_the_package_itself_loads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    """The release layout is what hear21passt's pretrained path accepts: its key names and
    shapes, optionally under "model", the patch projection optionally flat (older files). Each
    is loaded by the package's own path and by ours; the weights must agree."""
    from hear21passt.models import passt as package
    from hear21passt.models.helpers import vit_helpers

    state = passt.build_passt(n_classes=10, seed=3).state_dict()
    if layout != "plain":
        weight = state["patch_embed.proj.weight"]
        state["patch_embed.proj.weight"] = weight.reshape(weight.shape[0], -1)
    path = tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt"
    torch.save(state if layout == "plain" else {"model": state}, path)
    monkeypatch.setattr(vit_helpers, "download_cached_file", lambda *a, **k: str(path))
    package.first_RUN = False
    theirs = package.get_model(arch=passt.ARCH, pretrained=True, n_classes=527, in_channels=1,
                               fstride=10, tstride=10, input_fdim=128,
                               input_tdim=passt.PRETRAINED_FRAMES, s_patchout_t=0,
                               s_patchout_f=passt.FREQUENCY_PATCHOUT).state_dict()
    ours = passt.passt_teacher_network(str(path), n_classes=10, seed=0).passt.state_dict()
    shared = [k for k in theirs if not k.startswith(("head.1", "head_dist"))]
    assert len(shared) > 100 and all(torch.equal(ours[k], theirs[k]) for k in shared)


@pytest.mark.slow
def test_passt_fine_tunes_and_joins_the_cached_ensemble(tiny_corpus: Path, tmp_path: Path) -> None:
    data = load_split_data(str(tiny_corpus), 25, pm=PM, cache_dir=tmp_path, progress=False)
    few = data.train.subset(np.arange(6))
    recipe = TrainingRecipe(epochs=1, warmup_steps=0, seed=3)
    fitted = []
    result = ensemble_logits(few, teacher_names=["passt=scratch", "wide_cp_mobile=16"], pm=PM,
                             cache_dir=tmp_path, recipe=recipe, progress=False,
                             on_teacher=lambda name, fit: fitted.append((name, fit)))
    assert result.logits.shape == (6, 10) and np.isfinite(result.logits).all()
    name, teacher = fitted[0]
    assert name == "passt" and teacher.front_end == passt.PasstFrontEndSettings()
    start = passt.passt_teacher_network("scratch", n_classes=10, seed=recipe.seed)
    block = "blocks.0.attn.qkv.weight"
    assert not torch.equal(start.passt.state_dict()[block], teacher.model.passt.state_dict()[block]), \
        "the fine-tune step changed nothing"
    assert (result.directory / "passt" / "passt.pt").is_file()
    # Scoring the teacher on other clips computes their PaSST features, not the student's.
    scored = teacher.predict(data.validation.features.subset(np.arange(3)),
                             precision=precision_for("cpu"))
    assert scored.shape == (3, 10)
    again = ensemble_logits(few, teacher_names=["passt=scratch", "wide_cp_mobile=16"], pm=PM,
                            cache_dir=tmp_path, recipe=recipe, progress=False)
    assert again.cache_hit and np.array_equal(again.logits, result.logits)


class _Planted:
    """Unpickling this would create a file: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _no_teacher_left(cache: Path) -> None:
    folder = cache / "teachers"
    assert not folder.exists() or not any(folder.iterdir()), "a half-written teacher was left"


def test_passt_refuses_a_pickled_weights_file(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"blocks.0.attn.qkv.weight": _Planted(marker)}, evil)
    result = cli("-q", "teachers", "fit", "--data", tiny_corpus, "--split", "25",
                 "--teacher", f"passt={evil}", "--teacher-epochs", "1")
    one_line_error(result, "evil.pt", "refused")
    assert not marker.exists()
    _no_teacher_left(tmp_path / "cache")


def test_passt_without_weights_or_network_says_where_they_come_from(
        cli, tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unreachable = "http://127.0.0.1:9/passt-s-f128-p16-s10-ap.476-swa.pt"  # nothing listens
    monkeypatch.setattr(passt, "weights_url", lambda: unreachable)
    result = cli("-q", "teachers", "fit", "--data", tiny_corpus, "--split", "25",
                 "--teacher", "passt", "--teacher-epochs", "1")
    one_line_error(result, unreachable, "--teacher passt=PATH")
    assert not (tmp_path / "cache" / "downloads" / "passt" / Path(unreachable).name).exists()
    _no_teacher_left(tmp_path / "cache")


def test_passt_weights_are_downloaded_into_the_cache_given(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cache DIR`` is where the download goes, not $ASC_SEARCH_CACHE (issue 31)."""
    fetched = []

    def download(url: str, target: str, progress: bool = False) -> None:
        fetched.append(url)
        Path(target).write_bytes(b"weights")

    monkeypatch.setattr(passt.torch.hub, "download_url_to_file", download)
    monkeypatch.setenv("ASC_SEARCH_CACHE", str(tmp_path / "elsewhere"))
    target = passt.downloaded_weights(tmp_path / "given")
    assert target.is_relative_to(tmp_path / "given") and target.read_bytes() == b"weights"
    assert passt.downloaded_weights(tmp_path / "given") == target and len(fetched) == 1
    assert not (tmp_path / "elsewhere").exists()


def test_passt_without_its_package_says_how_to_install_it(
        cli, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("hear21passt", "hear21passt.models", "hear21passt.models.passt",
                   "hear21passt.models.preprocess"):
        monkeypatch.setitem(sys.modules, module, None)  # import now fails, as if not installed
    result = cli("-q", "teachers", "fit", "--data", tiny_corpus, "--split", "25",
                 "--teacher", "passt=scratch", "--teacher-epochs", "1")
    one_line_error(result, "asc-search[passt]")
