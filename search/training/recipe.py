"""The training recipe: one dataclass whose defaults are the DCASE 2024 baseline's published settings.

Read it top to bottom like the baseline's argparse block: optimiser, schedule, batch, augmentation,
distillation. ``asc-search train --help`` shows these defaults. Search trials use shorter proxy
schedules by overriding ``epochs`` (and, on the small embedded corpus, ``warmup_steps``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from asc_search.errors import AscSearchError


@dataclass(frozen=True)
class TrainingRecipe:
    # Optimisation (DCASE 2024 baseline)
    epochs: int = 150
    batch_size: int = 256
    learning_rate: float = 0.005
    weight_decay: float = 1e-4
    warmup_steps: int = 2000  # linear warm-up (at most half the run), then cosine decay to zero
    # Augmentation on log-mel features
    roll_seconds: float = 0.1  # random time roll of up to ±0.1 s
    mixstyle_p: float = 0.4  # Freq-MixStyle: probability per batch
    mixstyle_alpha: float = 0.3  # Beta(α, α) mixing weight
    freq_mask_bins: int = 48  # one frequency mask of up to 48 mel bins per clip
    time_mask_frames: int = 0  # one time mask of up to N frames per clip (off in the baseline)
    mixup_alpha: float = 0.0  # mixup: clips and targets blended by Beta(α, α) (off in the baseline)
    # Device impulse-response augmentation (Morocutti et al.): a device-a clip gets another
    # device's colouring with this probability (off in the baseline; device_responses.py)
    device_response_p: float = 0.0
    device_responses: str = ""  # folder of impulse-response WAVs; "" = the built-in synthetic bank
    # Knowledge distillation from cached ensemble logits (CP-JKU)
    kd_temperature: float = 2.0
    kd_weight: float = 0.98  # loss = (1 − w) · CE + w · T² · KL(teacher ‖ student / T)
    # Weight averaging (off in the baseline): the network a run returns is an exponential
    # moving average of its weights over the steps, with this decay (``train.WeightAverage``)
    ema_decay: float = 0.0
    # Reproducibility
    seed: int = 0

    def with_(self, **changes: Any) -> TrainingRecipe:
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise AscSearchError(f"unknown recipe setting(s): {', '.join(unknown)}")
        recipe = replace(self, **changes)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise AscSearchError("epochs and batch size must be at least 1")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise AscSearchError("learning rate must be positive, weight decay and warm-up ≥ 0")
        if not 0 <= self.mixstyle_p <= 1 or self.mixstyle_alpha <= 0:
            raise AscSearchError("mixstyle_p must be in [0, 1] and mixstyle_alpha positive")
        if self.mixup_alpha < 0:
            raise AscSearchError("mixup_alpha must be ≥ 0 (0 turns mixup off)")
        if not 0 <= self.device_response_p <= 1:
            raise AscSearchError("device_response_p must be in [0, 1] (0 turns it off)")
        if self.device_response_p > 0 and self.device_responses:
            from asc_search.training.device_responses import response_files

            response_files(self.device_responses)  # a missing or empty folder fails here, in one line
        if not 0 <= self.kd_weight <= 1 or self.kd_temperature <= 0:
            raise AscSearchError("kd_weight must be in [0, 1] and kd_temperature positive")
        if not 0 <= self.ema_decay < 1:
            raise AscSearchError("ema_decay must be in [0, 1) (0 turns weight averaging off)")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict: what caches key teachers and parents by. A field added after
        such keys existed enters only when it is set, so a recipe that leaves it off keeps the
        key (and the cached teachers and parents) it always had. The impulse-response folder
        enters by its content, not its path: edited files make new keys, a moved folder does not."""
        data = asdict(self)
        if self.device_response_p > 0:
            from asc_search.training.device_responses import source_digest

            data["device_responses"] = source_digest(self.device_responses)
        else:
            del data["device_responses"]
        for name, off in _KEYED_ONLY_WHEN_SET.items():
            if data[name] == off:
                del data[name]
        return data


#: Fields newer than the first cache keys, with the value that leaves them out of ``to_dict``.
_KEYED_ONLY_WHEN_SET: dict[str, Any] = {"mixup_alpha": 0.0, "device_response_p": 0.0,
                                        "ema_decay": 0.0}
