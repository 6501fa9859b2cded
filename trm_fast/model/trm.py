"""The Tiny Recursive Model: one supervision step on a carried (y, z) state (TRM_SPEC sections 1-2).

The model takes tensors and returns tensors; halting, losses and data streams belong to the training engine.

    x = embed(inputs, puzzle_ids)
    for cycle in range(T):             # cycles 0..T-2 without gradient
        for i in range(n):
            z = net(z, y + x)          # net(state, injection) = blocks(state + injection)
        y = net(y, z)
    logits = lm_head(y)[:, P:]; q_halt, q_continue = q_head(y[:, 0])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trm_fast.config import ModelConfig
from trm_fast.model.layers import BLOCK_OPS, ReasoningNet, lecun_weight, trunc_normal_
from trm_fast.ops import OpSet, check_implementations, fallback, get_ops, reference, resolve


@dataclass
class StepOutput:
    """One supervision step's results. `carry` is the detached state for the next step ((y, z) for TRM)."""

    carry: tuple[torch.Tensor, ...]
    logits: torch.Tensor  # (B, seq_len, vocab) in the forward dtype
    q_halt: torch.Tensor  # (B,) fp32
    q_continue: torch.Tensor  # (B,) fp32


@dataclass
class LatentNoise:
    """Gaussian noise added to z after every z update of a step (PTRM, arXiv 2605.19943): z += scale[row] * N(0, 1).
    Test-time only; rows of scale 0 keep z as it is. `generator` makes the draws reproducible."""

    scale: torch.Tensor  # (B,) fp32 standard deviation per row
    generator: torch.Generator | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(z.shape, generator=self.generator, device=z.device, dtype=torch.float32)
        return (z.float() + self.scale.view(-1, 1, 1) * eps).to(z.dtype)


# The op set also serves the loss on the logits (the trainer reaches it through `resolved`): checked with the blocks'.
HEAD_OPS = ("token_cross_entropy",)


def _skip_host_checks(t: torch.Tensor) -> bool:
    """Input-range checks read values back to the host: skipped while a CUDA graph captures (a sync is illegal
    there) and while torch.compile traces (a data-dependent branch would break the graph)."""
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


class PuzzleEmbedding(nn.Module):
    """Per-puzzle vectors, zero-initialised, trained by sparse sign-SGD (not by the dense optimiser).

    The table is a buffer (it is neither in parameters() nor in the EMA). In a grad-enabled forward the rows of
    the batch are gathered into a leaf tensor that records its gradient; the sparse optimiser reads and clears
    `pending` (a list of (ids, rows) pairs: one per forward, so gradient accumulation works).

    `keep_on_host()` pins the table in host memory (train.puzzle_emb_device=cpu): moving the model to a GPU then
    leaves it there, a forward gathers only the batch's rows and copies them over, and the sparse optimiser updates
    those rows in place on the host."""

    def __init__(self, num_ids: int, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_ids, dim))
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.on_host = False

    def keep_on_host(self) -> "PuzzleEmbedding":
        table = self.weight.detach().to("cpu")
        if torch.cuda.is_available():
            table = table.pin_memory()  # page-locked: the row copies to the GPU are asynchronous DMA
        self.weight = table
        self.on_host = True
        return self

    def _apply(self, fn, recurse=True):
        if not self.on_host:
            return super()._apply(fn, recurse)
        table = self._buffers.pop("weight")  # .to(device) / .cuda() / .half() leave the host table as it is
        try:
            return super()._apply(fn, recurse)
        finally:
            self._buffers["weight"] = table

    def forward(self, ids: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        if check_range and not _skip_host_checks(ids) and ids.numel() and \
                (ids.min() < 0 or ids.max() >= self.weight.shape[0]):
            raise ValueError(
                f"puzzle identifier out of range [0, {self.weight.shape[0]}): got min {int(ids.min())}, max {int(ids.max())}"
            )
        if self.weight.device == ids.device:
            rows = self.weight.index_select(0, ids)
        else:  # host table: gather the batch's rows on the host, one (pinned, asynchronous) copy to the device
            rows = self.weight.index_select(0, ids.to(self.weight.device))
            if self.weight.is_pinned():
                rows = rows.pin_memory()
            rows = rows.to(ids.device, non_blocking=True)
        if torch.is_grad_enabled() and self.training:
            rows = rows.detach().requires_grad_(True)
            self.pending.append((ids, rows))
        return rows


def initial_state_dtype(config: ModelConfig) -> torch.dtype:
    """The published code keeps its initial states in its forward dtype (bf16 in the published runs). fp32 when the
    forward dtype is explicitly float32, so an fp32 run starts from unrounded states; bf16 otherwise (auto included,
    where the forward dtype depends on the device but the stored states must not)."""
    return torch.float32 if config.forward_dtype == "float32" else torch.bfloat16


class TRM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        D = config.hidden_size
        self.embed_scale = math.sqrt(D)
        self.embed_tokens = nn.Parameter(trunc_normal_(torch.empty(config.vocab_size, D), std=1.0 / self.embed_scale))
        self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, D) if config.puzzle_emb_dim else None
        self.net = ReasoningNet(config)
        self.lm_head = lecun_weight(config.vocab_size, D)
        self.q_head_weight = nn.Parameter(torch.zeros(2, D))
        self.q_head_bias = nn.Parameter(torch.full((2,), -5.0))
        # Fixed, untrained initial states, stored like the published buffers (initial_state_dtype).
        self.register_buffer("y_init", trunc_normal_(torch.empty(D), std=1.0).to(initial_state_dtype(config)))
        self.register_buffer("z_init", trunc_normal_(torch.empty(D), std=1.0).to(initial_state_dtype(config)))
        self.op_overrides: dict[str, str] = {}
        self._resolved: dict = {}
        # Whether a forward checks that its token and puzzle ids lie in range (a clear error instead of an indexing
        # fault). The check reads values back: on a GPU four device-to-host syncs a step, each stalling the host's
        # run-ahead. The trainer turns it off: its batches come from datasets validated at load against the model's
        # config (trm_fast.data.format, fit_model_to_data), so the check could never fail there.
        self.check_input_ranges = True
        if config.mixer == "attention" and config.pos_encoding == "rope":
            cos, sin = reference.rope_cos_sin(config.total_seq_len, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None

    # -- forward dtype and op implementations, resolved once per device (trm_fast.ops.resolve) ---------------
    def resolved(self, device: torch.device) -> tuple[torch.dtype, OpSet]:
        """(forward dtype, op set) on `device`: the blocks' ops and the token loss on the logits (HEAD_OPS). Cached
        per device and per the config fields that decide it (a plain dict: torch.compile traces through it)."""
        key = (torch.device(device), self.config.backend, self.config.forward_dtype, self.config.self_check)
        found = self._resolved.get(key)
        if found is None:  # on CUDA the Triton ops the blocks call are checked first (trm_fast.ops.fallback)
            implementations = fallback.checked_op_implementations(self.config, key[0], overrides=self.op_overrides,
                                                                  ops=BLOCK_OPS[self.config.mixer] + HEAD_OPS)
            found = self._resolved[key] = (resolve.forward_dtype(self.config, key[0]), get_ops(implementations))
        return found

    def forward_dtype(self, device: torch.device) -> torch.dtype:
        return self.resolved(device)[0]

    def op_implementations(self, device: torch.device) -> dict[str, str]:
        """op name -> "torch" or "triton" on `device`."""
        return dict(self.resolved(device)[1].implementations)

    def backend(self, device: torch.device) -> str:
        """The op implementations in a word, for logs: "torch", "triton", or "mixed: ..." (resolve.describe)."""
        return resolve.describe(self.op_implementations(device))

    def override_ops(self, overrides: dict[str, str]) -> None:
        """Run the named ops on another implementation than the config's (op name -> "torch" or "triton"), on every
        device from the next forward on; {} restores the config's choice."""
        check_implementations(overrides, "op overrides")
        self.op_overrides = dict(overrides)
        self._resolved.clear()

    @property
    def puzzle_len(self) -> int:
        return self.config.puzzle_emb_len if self.puzzle_emb is not None else 0

    # -- carry ---------------------------------------------------------------------------------------
    def initial_carry(self, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """y and z of a fresh batch: the initial vectors broadcast to every position."""
        device = torch.device(device)
        shape = (batch_size, self.config.total_seq_len, self.config.hidden_size)
        dtype = self.forward_dtype(device)
        y = self.y_init.to(device=device, dtype=dtype).expand(shape).clone()
        z = self.z_init.to(device=device, dtype=dtype).expand(shape).clone()
        return y, z

    def reset_carry(self, reset: torch.Tensor, carry: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Samples where `reset` is true restart from the initial y/z."""
        y, z = carry
        mask = reset.view(-1, 1, 1)
        y = torch.where(mask, self.y_init.to(y.dtype), y)
        z = torch.where(mask, self.z_init.to(z.dtype), z)
        return y, z

    # -- the step ------------------------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor, puzzle_ids: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        if inputs.dim() != 2 or inputs.shape[1] != self.config.seq_len:
            raise ValueError(f"inputs must have shape (batch, {self.config.seq_len}), got {tuple(inputs.shape)}")
        if inputs.dtype.is_floating_point:
            raise ValueError(f"inputs must be integer token ids, got dtype {inputs.dtype}")
        if self.check_input_ranges and not _skip_host_checks(inputs) and inputs.numel() and \
                (inputs.min() < 0 or inputs.max() >= self.config.vocab_size):
            raise ValueError(
                f"input token out of range [0, {self.config.vocab_size}): min {int(inputs.min())}, max {int(inputs.max())}"
            )
        x = self.embed_tokens.to(dtype)[inputs.long()]
        if self.puzzle_emb is not None:
            if puzzle_ids is None:
                raise ValueError("this model has a puzzle embedding: puzzle_ids (batch,) are required")
            rows = self.puzzle_emb(puzzle_ids.long(), self.check_input_ranges).to(dtype)
            pad = x.new_zeros(x.shape[0], self.puzzle_len - 1, x.shape[2])
            x = torch.cat((rows.unsqueeze(1), pad, x), dim=1)
        return self.embed_scale * x

    def rope(self):
        return None if self.rope_cos is None else (self.rope_cos, self.rope_sin)

    def latent_cycle(self, y, z, x, ops, rope, noise: LatentNoise | None = None):
        """One cycle: n updates of z with input injection, then one update of y. y does not change during the z
        updates, so y + x is added once (the same tensor n times), and each z update but the last returns the next
        one's input z + (y + x) from the network's last norm kernel (ReasoningNet's then_add), not z. With test-time
        `noise`, z itself is perturbed after every update, so the injection is added separately."""
        injection = y + x
        if noise is None:
            h = z + injection
            for _ in range(self.config.n - 1):
                h = self.net(h, None, ops, rope, then_add=injection)
            z = self.net(h, None, ops, rope)
        else:
            for _ in range(self.config.n):
                z = noise(self.net(z, injection, ops, rope))
        y = self.net(y, z, ops, rope)
        return y, z

    def prepare(self, carry, inputs: torch.Tensor, puzzle_ids: torch.Tensor | None):
        """What every step starts with: (embedded input x, carry in the forward dtype, op set, RoPE tables)."""
        dtype, ops = self.resolved(inputs.device)
        x = self.embed(inputs, puzzle_ids, dtype)
        return x, tuple(t.to(dtype) for t in carry), ops, self.rope()

    def heads(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = reference.linear(y, self.lm_head)[:, self.puzzle_len:]
        q = reference.linear(y[:, 0], self.q_head_weight, self.q_head_bias).float()
        return logits, q[:, 0], q[:, 1]

    def forward(self, carry: tuple[torch.Tensor, ...], inputs: torch.Tensor, puzzle_ids: torch.Tensor | None = None,
                noise: LatentNoise | None = None) -> StepOutput:
        """One supervision step from the carried (y, z). Gradient flows through the last cycle only. `noise`
        (test time) perturbs z after each of its updates."""
        x, (y, z), ops, rope = self.prepare(carry, inputs, puzzle_ids)
        with torch.no_grad():
            for _ in range(self.config.T - 1):
                y, z = self.latent_cycle(y, z, x, ops, rope, noise)
        y, z = self.latent_cycle(y, z, x, ops, rope, noise)
        logits, q_halt, q_continue = self.heads(y)
        return StepOutput(carry=(y.detach(), z.detach()), logits=logits, q_halt=q_halt, q_continue=q_continue)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the puzzle-embedding table and the initial states are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
