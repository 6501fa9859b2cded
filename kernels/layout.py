"""Buffer layouts the launchers are tuned for, made in one place for the ops that allocate them (trm_fast.ops) and
the ahead-of-time capture that must hand the launchers the same buffers (kernels/aot.py)."""
from __future__ import annotations

import torch

ROW_ALIGN_BYTES = 16  # a row start on a 16-byte boundary: Triton's JIT then specialises the pointer for wide loads


def padded_rows(rows: int, cols: int, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised (rows, cols) matrix whose rows start ROW_ALIGN_BYTES apart (row stride rounded up): the
    token-mixing weights have rows of L = 97 or 916 values, which would otherwise force narrow, unaligned loads."""
    align = max(1, ROW_ALIGN_BYTES // torch.empty((), dtype=dtype, device="meta").element_size())
    stride = -(-cols // align) * align
    return torch.empty(rows, stride, dtype=dtype, device=device)[:, :cols]
