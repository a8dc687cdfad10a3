"""PaSST as a teacher: the seed's teachers, built by PaSST's own package (``hear21passt``).

The seed distilled from PaSST (Patchout faSt Spectrogram Transformer) ensembles: PaSST-S pretrained
on AudioSet, fine-tuned on the split. This teacher builds that network through ``hear21passt`` (an
optional extra, ``pip install 'asc-search[passt]'``), loads the AudioSet weights tensor-only,
fine-tunes it on the split's training clips with CP-JKU's teacher recipe, and hands its logits to
the same cached ensemble as every other teacher.

``--teacher passt[=OPTION]``:

- ``passt=PATH``: a state-dict file of the AudioSet-pretrained PaSST-S (the release file
  ``passt-s-f128-p16-s10-ap.476-swa.pt``), read with ``weights_only=True``, never unpickled;
- ``passt``: that release, downloaded once into the cache folder from the address the package
  names (the machine must be online);
- ``passt=scratch``: random initial weights (the seed's fourth teacher was trained from scratch;
  the tests use it too).

PaSST reads its own features, not the student's: 128 mels at a 10 ms hop from 32 kHz audio with
pre-emphasis and PaSST's normalisation (``hear21passt``'s ``AugmentMelSTFT`` in evaluation mode),
computed once per training list and cached like the student's log-mels
(``FeatureSet.computed_with``), from the teacher's own training clips only. The module's mel-range
jitter is an augmentation inside the front-end, which caching fixes, so it is not applied; the
recipe's roll, masks and Freq-MixStyle are.

PaSST-S has 86 M parameters: on this project's 2-core CPU a training step took 0.50 CPU-seconds per
clip on one thread (batch 16, measured; README, "Real PaSST teachers"), so a real fine-tune
belongs on a GPU (it moves there by itself when CUDA is available).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import pickle
import urllib.error
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asc_search.errors import PluginError
from asc_search.features.logmel import ClipResampler
from asc_search.hookspecs import hookimpl
from asc_search.paths import cache_dir
from asc_search.plugin_types import Teacher
from asc_search.plugins.teachers import file_fingerprint
from asc_search.teachers.ensemble import TeacherContext, TeacherFit
from asc_search.training.train import LabelledSet, fit, precision_for, predict

#: The AudioSet-pretrained PaSST-S the seed (and CP-JKU's DCASE teachers) fine-tuned.
ARCH = "passt_s_swa_p16_128_ap476"
AUDIOSET_CLASSES = 527
PRETRAINED_FRAMES = 998  # 10-s AudioSet clips: the time positions the weights carry
#: CP-JKU's PaSST teacher fine-tune (cpjku_dcase23 ``run_passt_training.py``): Adam at 1e-5 with
#: weight decay 1e-3, batch 80, Freq-MixStyle p 0.4 α 0.4, masks of 48 mel bins and 20 frames,
#: a roll of 10,000 samples (0.31 s), 6 of 12 frequency patch rows dropped (structured patchout),
#: three warm-up epochs. Epochs and seed come from the teacher recipe (``--teacher-epochs``).
FINE_TUNE = {"batch_size": 80, "learning_rate": 1e-5, "weight_decay": 1e-3, "mixstyle_p": 0.4,
             "mixstyle_alpha": 0.4, "freq_mask_bins": 48, "time_mask_frames": 20,
             "roll_seconds": 0.31}
WARMUP_EPOCHS = 3
FREQUENCY_PATCHOUT = 6
OPTIONS = "passt=PATH (a PaSST-S state dict), passt (download it) or passt=scratch"


@dataclass(frozen=True)
class PasstFrontEndSettings:
    """PaSST's front-end (``AugmentMelSTFT``) as its AudioSet training used it, at eval time."""

    sample_rate: int = 32_000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    n_mels: int = 128
    f_min: float = 0.0
    f_max_aug_range: int = 1000  # the top mel edge sits half of this below Nyquist at eval time
    clip_seconds: float = 1.0
    dtype: str = "float16"  # normalised features span about ±2: float16 is exact enough

    @property
    def shape(self) -> tuple[int, int]:
        # Pre-emphasis (a 2-tap filter) shortens the clip by one sample before the centred STFT.
        return (self.n_mels, (round(self.sample_rate * self.clip_seconds) - 1) // self.hop_length + 1)

    @property
    def silence(self) -> float:
        return (math.log(1e-5) + 4.5) / 5.0  # log(0 + 1e-5) under PaSST's normalisation

    @property
    def log_scale(self) -> float:
        return 1.0 / 5.0  # PaSST's (log(mel + 1e-5) + 4.5) / 5

    def key(self) -> str:
        payload = json.dumps({"front_end": "passt", "v": 1, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def build(self) -> nn.Module:
        return PasstMel(self)


class PasstMel(nn.Module):
    """Resample and fit the clip, then ``hear21passt``'s mel front-end in evaluation mode."""

    def __init__(self, settings: PasstFrontEndSettings) -> None:
        super().__init__()
        preprocess = _package("hear21passt.models.preprocess")
        self.clip = ClipResampler(settings.sample_rate, settings.clip_seconds)
        self.mel = preprocess.AugmentMelSTFT(
            n_mels=settings.n_mels, sr=settings.sample_rate, win_length=settings.win_length,
            hopsize=settings.hop_length, n_fft=settings.n_fft, freqm=0, timem=0,
            fmin=settings.f_min, fmax=settings.sample_rate // 2 - settings.f_max_aug_range // 2,
            fmax_aug_range=settings.f_max_aug_range).eval()

    @torch.no_grad()
    def forward(self, samples: torch.Tensor, source_rate: int) -> torch.Tensor:
        audio = self.clip(samples, source_rate)
        with warnings.catch_warnings():
            # The package's STFT and autocast calls use spellings torch now warns about.
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            return self.mel(audio.reshape(1, -1) if audio.ndim == 1 else audio).squeeze(0)


class PasstClassifier(nn.Module):
    """PaSST returning only its logits (the package returns logits and embedding)."""

    def __init__(self, passt: nn.Module) -> None:
        super().__init__()
        self.passt = passt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            # 1-s clips are shorter than the 10-s AudioSet input it was built for; the package
            # warns, then uses the first time positions, which is what is meant.
            warnings.filterwarnings("ignore", message="Input image size", category=UserWarning)
            out = self.passt(x)
        return out[0] if isinstance(out, tuple) else out


def _package(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PluginError("the passt teacher needs PaSST's package: "
                          "pip install 'asc-search[passt]' (hear21passt and timm)") from exc


def build_passt(*, n_classes: int, seed: int) -> nn.Module:
    """PaSST-S as the package builds it for AudioSet (527 classes, 10-s time positions), with
    heads for ``n_classes``. Shorter inputs use the first time positions, as the package does."""
    passt_models = _package("hear21passt.models.passt")
    passt_models.first_RUN = False  # otherwise its first forward prints every tensor shape
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        model = passt_models.get_model(  # prints the whole network: kept off the terminal
            arch=ARCH, pretrained=False, n_classes=AUDIOSET_CLASSES, in_channels=1, fstride=10,
            tstride=10, input_fdim=PasstFrontEndSettings().n_mels, input_tdim=PRETRAINED_FRAMES,
            s_patchout_t=0, s_patchout_f=FREQUENCY_PATCHOUT)
    return model


def new_heads(model: nn.Module, *, n_classes: int, seed: int) -> None:
    """Replace the AudioSet output layers (class and distillation heads) by ``n_classes``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        width = model.head[-1].in_features
        model.head[-1] = nn.Linear(width, n_classes)
        if model.head_dist is not None:
            model.head_dist = nn.Linear(width, n_classes)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors, loaded without unpickling anything else."""
    if not path.is_file():
        raise PluginError(f"{path}: PaSST weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PluginError(f"{path}: not a tensor-only PaSST state dict, refused unread "
                          f"({first[:160]})") from exc
    for wrapper in ("state_dict", "model"):  # a training checkpoint; DeiT-style releases
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PluginError(f"{path}: not a PaSST state dict (expected names mapped to tensors)")
    return state


def weights_url() -> str:
    """Where the package downloads the AudioSet-pretrained PaSST-S from."""
    return _package("hear21passt.models.passt").default_cfgs[ARCH]["url"]


def downloaded_weights(cache: Path | None = None) -> Path:
    """The release file, fetched once into the run's cache folder (``cache``, the ``--cache``
    given; else the default one), written whole, then renamed."""
    url = weights_url()
    target = cache_dir(cache) / "downloads" / "passt" / Path(url).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch writes a temporary file beside the target and renames it when complete
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PluginError(f"passt: no weights file given, and downloading the AudioSet weights "
                          f"from {url} failed ({reason}); fetch that file where there is a "
                          "network and pass --teacher passt=PATH (or passt=scratch for random "
                          "initial weights)") from exc
    return target


def passt_teacher_network(option: str | None, *, n_classes: int, seed: int,
                          cache: Path | None = None) -> nn.Module:
    """PaSST-S with AudioSet weights (``option`` a path, or None to download into ``cache``) or
    random ones (``scratch``), its heads replaced for ``n_classes``."""
    path = None if option == "scratch" else (
        Path(option).expanduser() if option else downloaded_weights(cache))
    state = read_weights(path) if path is not None else None  # refuse a bad file before building
    model = build_passt(n_classes=n_classes, seed=seed)
    if state is not None:
        # The package's own adaptation of a release file (its old flat patch projection, an
        # ImageNet position embedding), as its pretrained path applies it after loading.
        state = _package("hear21passt.models.passt").checkpoint_filter_fn(state, model)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise PluginError(f"{path}: not the weights of {ARCH} "
                              f"({str(exc).splitlines()[0][:160]})") from exc
    new_heads(model, n_classes=n_classes, seed=seed)
    return PasstClassifier(model)


def fit_passt(context: TeacherContext) -> TeacherFit:
    front_end = PasstFrontEndSettings()
    n_classes = len(context.train.classes)
    model = passt_teacher_network(context.option, n_classes=n_classes, seed=context.recipe.seed,
                                  cache=context.cache)
    train = context.train
    features = train.features.computed_with(front_end)
    passt_train = LabelledSet(files=train.files, features=features, labels=train.labels,
                              devices=train.devices)
    steps_per_epoch = math.ceil(len(train) / FINE_TUNE["batch_size"])
    recipe = context.recipe.with_(**FINE_TUNE, warmup_steps=WARMUP_EPOCHS * steps_per_epoch)
    precision = context.precision
    if precision.device.type == "cpu" and torch.cuda.is_available():
        precision = precision_for("cuda")
    fit(model, passt_train, recipe, precision=precision, settings=front_end, resume=context.resume,
        progress=context.progress, label="teacher passt")
    logits = predict(model, features, precision=precision, batch_size=64)
    model.to("cpu")
    torch.save({k: v.half() for k, v in model.state_dict().items()}, context.workdir / "passt.pt")
    return TeacherFit(logits=logits, model=model, front_end=front_end)


def _fingerprint(option: str | None) -> str:
    if option == "scratch":
        return "scratch"
    return file_fingerprint(option) if option else weights_url()


@hookimpl
def asc_teachers() -> list[Teacher]:
    return [Teacher("passt", f"PaSST-S through hear21passt, fine-tuned on the split: {OPTIONS}",
                    fit_passt, fingerprint=_fingerprint,
                    settings={"arch": ARCH, "fine_tune": FINE_TUNE, "warmup_epochs": WARMUP_EPOCHS,
                              "front_end": PasstFrontEndSettings().key()})]
