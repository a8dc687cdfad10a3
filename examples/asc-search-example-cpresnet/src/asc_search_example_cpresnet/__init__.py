"""An example asc-search plugin: CP-ResNet as a second student family.

asc-search finds this module through the ``asc_search`` entry point in pyproject.toml; nothing
in asc-search names it. The family (``cp_resnet.py``) is written against the plugin API only:
``Architecture`` with a build function, presets, and the width plan (``widths`` and
``width_layers``) that lets the engine prune it to exact widths and fill it to a budget.
"""

from __future__ import annotations

from asc_search.architecture import Architecture, family_spec
from asc_search.hookspecs import hookimpl
from asc_search_example_cpresnet.cp_resnet import (
    ARCH,
    CPResNetParams,
    build,
    width_layers,
    widths,
)

#: The DCASE 2022 student's base width (``get_model``'s default ``base_channels=32``).
PUBLISHED_BASE = 32
#: The widest base at which the published configuration fits 30 M MACs and 128,000 bytes at
#: float16 (see ``cp_resnet``'s docstring for the counts).
SEED_BASE = 20

PUBLISHED = CPResNetParams()

PRESETS = {
    # The published width, over the budgets: the wide parent a budget-filling plan prunes.
    "cp-resnet-dcase22": family_spec(ARCH, PUBLISHED, base_channels=PUBLISHED_BASE),
    # The seed: the published configuration at the widest base width that fits.
    f"cp-resnet-dcase22-b{SEED_BASE}": family_spec(ARCH, PUBLISHED, base_channels=SEED_BASE),
}


@hookimpl
def asc_architectures() -> list[Architecture]:
    return [Architecture(
        name=ARCH,
        description="CP-ResNet: CP-JKU's receptive-field-regularised residual CNN "
                    "(DCASE 2019-2022; example plugin)",
        build=build,
        presets=PRESETS,
        widths=widths,
        width_layers=width_layers,
    )]
