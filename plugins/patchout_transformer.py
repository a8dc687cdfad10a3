"""A small patchout spectrogram transformer, in the spirit of PaSST, trained from scratch.

PaSST (Koutini et al.) cuts the log-mel spectrogram into patches, gives frequency and time their own
positional embeddings, and during training drops whole rows and columns of patches ("structured
patchout"), which regularises and speeds up training. The seed retrained one such teacher from
scratch on the split; this is a CPU-sized version of it.

Spec fields it reads: ``base_channels`` = embedding width, ``n_blocks[0]`` = transformer layers,
``expansion_rate`` = MLP width ratio, ``n_classes``, ``in_channels``. Heads: width / 32.
"""

from __future__ import annotations

import torch
from torch import nn

from asc_search.architecture import Architecture, ArchSpec, SpecError
from asc_search.hookspecs import hookimpl

PATCH = (16, 8)  # mel bins × frames per patch
FREQ_OUT, TIME_OUT = 4, 2  # patch rows / columns dropped per training batch


class PatchoutTransformer(nn.Module):
    def __init__(self, spec: ArchSpec, *, n_mels: int = 256, frames: int = 65) -> None:
        super().__init__()
        width = spec.base_channels
        if width % 32 or width < 32 or not spec.n_blocks:
            raise SpecError("patchout_transformer needs base_channels a multiple of 32 (≥ 32) "
                            "and n_blocks = (layers,)")
        self.freq_patches, self.time_patches = n_mels // PATCH[0], frames // PATCH[1]
        self.embed = nn.Conv2d(spec.in_channels, width, kernel_size=PATCH, stride=PATCH)
        self.freq_position = nn.Parameter(torch.zeros(1, width, self.freq_patches, 1))
        self.time_position = nn.Parameter(torch.zeros(1, width, 1, self.time_patches))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        layer = nn.TransformerEncoderLayer(
            d_model=width, nhead=width // 32, dim_feedforward=round(width * spec.expansion_rate),
            dropout=0.1, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=spec.n_blocks[0],
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, spec.n_classes)
        for parameter in (self.freq_position, self.time_position, self.cls):
            nn.init.trunc_normal_(parameter, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x)[..., : self.freq_patches, : self.time_patches]
        patches = patches + self.freq_position + self.time_position
        if self.training:  # structured patchout: drop whole patch rows and columns
            keep_f = torch.randperm(self.freq_patches, device=x.device)[FREQ_OUT:].sort().values
            keep_t = torch.randperm(self.time_patches, device=x.device)[TIME_OUT:].sort().values
            patches = patches[:, :, keep_f][:, :, :, keep_t]
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.head(self.norm(self.encoder(tokens)[:, 0]))


TEACHER_SPEC = ArchSpec(arch="patchout_transformer", base_channels=96, n_blocks=(4,),
                        expansion_rate=2.0, factorization=("plain",))


@hookimpl
def asc_architectures() -> list[Architecture]:
    return [Architecture(
        name="patchout_transformer",
        description="small PaSST-style patchout transformer (teacher; not budget-sized)",
        build=PatchoutTransformer,
        presets={"patchout-teacher": TEACHER_SPEC},
    )]
