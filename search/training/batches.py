"""Where a fit's batches come from, on the device it trains on.

A 30 M-MAC network's step on a GPU takes milliseconds. A loop that gathers each batch from the
cached array on the host, augments it there and copies it from pageable memory leaves such a GPU
idle most of the time (DESIGN.md §11). So on an accelerator a split's stored features are copied
once into device memory, in their stored float16 (4.65 GB at TAU22's split 100), and a batch is an
index into them; augmentation then runs on the device (``asc_search.training.augment`` moves its
small random draws there) and the loop asks the host for nothing per step. A split too large for
the device's free memory is gathered on the host into pinned memory and copied asynchronously.

On the CPU nothing changes: a batch is read from the cache file (``FeatureSet.batch``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from asc_search.features.logmel import FeatureSet

log = logging.getLogger(__name__)

#: The share of the device's free memory a split's features may take when copied there.
RESIDENT_SHARE = 0.5
#: Rows copied to the device at a time while a split's features are made resident.
_UPLOAD_ROWS = 4096


def to_device(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without waiting for it: from pinned memory,
    asynchronously, on an accelerator; the array itself on the CPU."""
    tensor = torch.from_numpy(values) if isinstance(values, np.ndarray) else values
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class DeviceBatches:
    """A split's features, batched on ``device`` (see the module docstring)."""

    def __init__(self, features: FeatureSet, device: torch.device, *,
                 resident: bool | None = None) -> None:
        """``resident`` None: on CUDA when the features fit (``RESIDENT_SHARE``), never on other
        devices; True or False forces the choice (tests run the resident path on the CPU)."""
        self.features, self.device = features, device
        self.store: torch.Tensor | None = None
        shape = features.array.shape
        dtype = torch.from_numpy(np.empty(0, dtype=features.array.dtype)).dtype
        if resident is None and device.type == "cuda":
            needed = int(np.prod(shape)) * dtype.itemsize
            free, _ = torch.cuda.mem_get_info(device)
            resident = needed <= RESIDENT_SHARE * free
            if not resident:
                log.info("the split's features (%.1f GB) do not fit in half the device's free "
                         "memory (%.1f GB); batches are copied from the host",
                         needed / 1e9, free / 1e9)
        if resident:
            self.store = torch.empty(shape, dtype=dtype, device=device)
            for start in range(0, shape[0], _UPLOAD_ROWS):
                rows = np.arange(start, min(start + _UPLOAD_ROWS, shape[0]))
                self.store[start:start + len(rows)] = to_device(features.gather(rows), device)

    @property
    def resident(self) -> bool:
        """Whether the features live in device memory."""
        return self.store is not None

    def __call__(self, rows: np.ndarray, rows_on_device: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` as a float32 batch (B, 1, mels, frames) on the device;
        ``rows_on_device`` is the same index already on the device."""
        if self.store is not None:
            return self.store.index_select(0, rows_on_device).float().unsqueeze(1)
        if self.device.type == "cpu":
            return self.features.batch(rows)
        return to_device(self.features.batch(rows), self.device)
