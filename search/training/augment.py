"""Augmentations on log-mel batches (B, 1, mels, frames), applied on the fly during training.

All of them act on cached features, so training never touches audio. Each is switched off by a zero
setting in the recipe, which is how a search can treat their strengths as dimensions.

They run on the device the batch is on. Every random draw comes from the fit's CPU generator (so a
run is the same run on any device, and resumable from its saved state); the few small tensors
drawn (shifts, mixing weights, permutations) are sent to the device without a host sync, and the
work on the batch itself happens there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from asc_search.training.batches import to_device
from asc_search.training.device_responses import DeviceResponses
from asc_search.training.recipe import TrainingRecipe


def time_roll(x: torch.Tensor, max_frames: int, generator: torch.Generator) -> torch.Tensor:
    """Roll each clip along time by its own random shift in [−max_frames, max_frames]."""
    if max_frames <= 0:
        return x
    batch, frames = x.shape[0], x.shape[-1]
    shifts = torch.randint(-max_frames, max_frames + 1, (batch, 1), generator=generator)
    index = to_device((torch.arange(frames).unsqueeze(0) - shifts) % frames, x.device)
    return torch.gather(x, -1, index.view(batch, 1, 1, frames).expand_as(x))


def freq_mixstyle(x: torch.Tensor, *, p: float, alpha: float, generator: torch.Generator,
                  eps: float = 1e-6) -> torch.Tensor:
    """Freq-MixStyle (Schmid et al.): with probability ``p`` per batch, normalise each clip by its
    per-frequency mean and std and re-scale with statistics mixed with another clip's.

    Device responses live mostly in per-frequency level; mixing them teaches invariance to devices
    the split barely contains.
    """
    if p <= 0 or torch.rand((), generator=generator).item() >= p:
        return x
    batch = x.shape[0]
    mean = x.mean(dim=(1, 3), keepdim=True)
    std = (x.var(dim=(1, 3), keepdim=True) + eps).sqrt()
    normed = (x - mean) / std
    # torch's Beta sampler takes no generator; seed numpy's from ours to stay deterministic.
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, batch))
    lam = to_device(lam.view(batch, 1, 1, 1).to(x.dtype), x.device)
    perm = to_device(torch.randperm(batch, generator=generator), x.device)
    mixed_mean = lam * mean + (1 - lam) * mean[perm]
    mixed_std = lam * std + (1 - lam) * std[perm]
    return normed * mixed_std + mixed_mean


def mask_along(x: torch.Tensor, *, max_width: int, axis: int, generator: torch.Generator,
               value: float = 0.0) -> torch.Tensor:
    """Set one random band of up to ``max_width`` bins along ``axis`` (2 = mels, 3 = frames) to
    ``value``, independently per clip: torchaudio's SpecAugment mask, drawn from ``generator``.

    torchaudio samples from the global RNG (on the batch's device), so it runs under a forked RNG
    seeded from ours.
    """
    if max_width <= 0:
        return x
    import torchaudio

    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return torchaudio.functional.mask_along_axis_iid(x, max_width, value, axis)


def augment(x: torch.Tensor, recipe: TrainingRecipe, *, frames_per_second: float,
            generator: torch.Generator, silence: float = math.log(1e-5), log_scale: float = 1.0,
            responses: DeviceResponses | None = None,
            eligible: torch.Tensor | None = None) -> torch.Tensor:
    """The recipe's augmentations in the DCASE baseline's order: roll, masks, Freq-MixStyle,
    after the device responses (``eligible`` clips only), which stand for the recording itself.

    The baseline masks the mel *power* before ``log(x + offset)`` and before Freq-MixStyle, so a
    masked bin is silence (``log(offset)``, about −11.5) that MixStyle then re-scales with the
    clip's statistics. Cached features are already logged: masking them to ``log(offset)`` is
    the same thing, and it must come before MixStyle to match. ``silence`` is that value in the
    features' own scale (``FrontEnd.silence``: PaSST's features are normalised).
    """
    if recipe.device_response_p > 0 and responses is not None:
        x = responses.apply(x, p=recipe.device_response_p, generator=generator, silence=silence,
                            log_scale=log_scale,
                            eligible=eligible if eligible is not None
                            else torch.ones(x.shape[0], dtype=torch.bool))
    x = time_roll(x, round(recipe.roll_seconds * frames_per_second), generator)
    x = mask_along(x, max_width=recipe.freq_mask_bins, axis=2, generator=generator, value=silence)
    x = mask_along(x, max_width=recipe.time_mask_frames, axis=3, generator=generator, value=silence)
    return freq_mixstyle(x, p=recipe.mixstyle_p, alpha=recipe.mixstyle_alpha, generator=generator)
