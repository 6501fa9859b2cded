"""Validated configuration of a TRM run: model, data and training sections, named presets that reproduce the
published runs (../shared/TRM_SPEC.md), small presets for CPU demos and tests, and overrides from the command
line (`model.n=4`) or from a YAML/JSON file.

Every field is checked on construction and after every override: a bad value raises ValueError naming the
field and the allowed range.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

# ---------------------------------------------------------------------------------------------- checks


def _one_of(*choices) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {list(choices)}"


def _int_range(lo: int, hi: int | None = None) -> tuple[Callable[[Any], bool], str]:
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    return ok, f"an integer in [{lo}, {'inf' if hi is None else hi}]"


def _float_range(lo: float, hi: float, lo_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > lo if lo_open else v >= lo) and v <= hi

    return ok, f"a number in {'(' if lo_open else '['}{lo}, {hi}]"


_BOOL = ((lambda v: isinstance(v, bool)), "true or false")
_STR = ((lambda v: isinstance(v, str)), "a string")


class _Validated:
    """Dataclass mixin: validates every field listed in CHECKS after construction."""

    CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {}
    SECTION = ""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name, (ok, allowed) in self.CHECKS.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"config field {self.SECTION}.{name} = {value!r} is invalid: must be {allowed}")
        self._cross_checks()

    def _cross_checks(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- sections


def swiglu_hidden(width: int, expansion: float = 4.0) -> int:
    """SwiGLU hidden size: round(expansion * width * 2/3), rounded up to a multiple of 256."""
    return 256 * math.ceil(round(expansion * width * 2 / 3) / 256)


@dataclass
class ModelConfig(_Validated):
    SECTION = "model"
    vocab_size: int = 11
    seq_len: int = 81  # task tokens, without the puzzle tokens
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    num_blocks: int = 2  # blocks in the one network ("L_layers")
    T: int = 3  # cycles per supervision step ("H_cycles"); the first T-1 run without gradient
    n: int = 6  # z updates per cycle ("L_cycles")
    mixer: str = "attention"  # "attention" (RoPE) or "mlp" (token-mixing SwiGLU over the sequence)
    pos_encoding: str = "rope"  # "rope" or "none"
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    puzzle_emb_len: int = 16  # puzzle-token positions prepended (first = the puzzle vector, rest zeros)
    puzzle_emb_dim: int = 512  # 0 disables the puzzle embedding (and its tokens)
    num_puzzle_identifiers: int = 1
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    act_continue: bool = False  # HRM-style Q-continue loss (off in the published TRM)
    forward_dtype: str = "auto"  # "auto" = bfloat16 on CUDA GPUs of compute capability 8.0+, float32 elsewhere
    backend: str = "auto"  # "auto" = triton on CUDA GPUs of compute capability 8.0+, torch elsewhere
    self_check: bool = True  # check the Triton ops on a new GPU/software first (trm_fast.ops.fallback)
    recompute: int = 0  # activation recomputation level of the gradient cycle (0, 1, 2)
    # ---- the paper's comparison systems and ablations (Tables 1 and 2) ----
    arch: str = "trm"  # "trm" or "hrm" (two networks, 1-step gradient, Q-learning halting)
    separate_nets: bool = False  # separate networks for the y and z updates
    grad_mode: str = "full"  # "full": backprop through the last cycle; "one_step": last z update and y update only
    latent: str = "dual"  # "dual" (y and z), "single" (z only), "multiscale" (n + 1 latent features)
    hrm_high_blocks: int = 4  # HRM: blocks of the slow high-level network
    hrm_low_blocks: int = 4  # HRM: blocks of the fast low-level network

    CHECKS = {
        "vocab_size": _int_range(2, 1 << 20),
        "seq_len": _int_range(1, 1 << 16),
        "hidden_size": _int_range(8, 1 << 15),
        "num_heads": _int_range(1, 256),
        "expansion": _float_range(0.0, 64.0, lo_open=True),
        "num_blocks": _int_range(1, 64),
        "T": _int_range(1, 64),
        "n": _int_range(1, 64),
        "mixer": _one_of("attention", "mlp"),
        "pos_encoding": _one_of("rope", "none"),
        "rope_theta": _float_range(1.0, 1e9),
        "rms_eps": _float_range(0.0, 1.0, lo_open=True),
        "puzzle_emb_len": _int_range(0, 1024),
        "puzzle_emb_dim": _int_range(0, 1 << 15),
        "num_puzzle_identifiers": _int_range(1),
        "halt_max_steps": _int_range(1, 1024),
        "halt_exploration_prob": _float_range(0.0, 1.0),
        "act_continue": _BOOL,
        "forward_dtype": _one_of("auto", "bfloat16", "float16", "float32"),
        "backend": _one_of("auto", "torch", "triton"),
        "self_check": _BOOL,
        "recompute": _int_range(0, 2),
        "arch": _one_of("trm", "hrm"),
        "separate_nets": _BOOL,
        "grad_mode": _one_of("full", "one_step"),
        "latent": _one_of("dual", "single", "multiscale"),
        "hrm_high_blocks": _int_range(1, 64),
        "hrm_low_blocks": _int_range(1, 64),
    }

    def _cross_checks(self) -> None:
        if self.mixer == "attention" and self.hidden_size % self.num_heads:
            raise ValueError(
                f"config field model.hidden_size = {self.hidden_size} must be divisible by model.num_heads = {self.num_heads}"
            )
        if self.pos_encoding == "rope" and self.mixer == "attention" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("config field model.hidden_size / model.num_heads must be even for RoPE")
        if self.puzzle_emb_dim not in (0, self.hidden_size):
            raise ValueError(
                f"config field model.puzzle_emb_dim = {self.puzzle_emb_dim} must be 0 or model.hidden_size ({self.hidden_size})"
            )
        if self.puzzle_emb_dim and self.puzzle_emb_len < 1:
            raise ValueError("config field model.puzzle_emb_len must be >= 1 when model.puzzle_emb_dim > 0")

    @property
    def total_seq_len(self) -> int:
        return self.seq_len + (self.puzzle_emb_len if self.puzzle_emb_dim else 0)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return swiglu_hidden(self.hidden_size, self.expansion)

    @property
    def token_mix_hidden(self) -> int:
        return swiglu_hidden(self.total_seq_len, self.expansion)


@dataclass
class DataConfig(_Validated):
    SECTION = "data"
    path: str = ""  # a built dataset folder (with train/ and test/), see `trm-fast data build`
    recipe: str = ""  # an embedded generated dataset built on first use (e.g. "sudoku6-demo"); "" = none
    global_batch_size: int = 768
    eval_batch_size: int = 0  # 0 = global_batch_size
    # epochs per sampler iteration (batches pack across the epochs of one iteration; only the last partial batch of
    # an iteration is dropped). 0 = auto: enough epochs for at least 100 global batches (< 1% dropped). The published
    # runs use their eval interval in epochs (e.g. 5000 for Sudoku-Extreme-1k).
    epochs_per_iter: int = 0

    CHECKS = {
        "path": _STR,
        "recipe": _STR,
        "global_batch_size": _int_range(1, 1 << 24),
        "eval_batch_size": _int_range(0, 1 << 24),
        "epochs_per_iter": _int_range(0, 1 << 20),
    }


@dataclass
class TrainConfig(_Validated):
    SECTION = "train"
    optimizer: str = "adam_atan2"  # the published optimiser; "adamw" as in the paper's text
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1.0
    lr_warmup_steps: int = 2000
    lr_min_ratio: float = 1.0  # cosine decay to lr * ratio after warm-up; 1.0 = constant (published)
    puzzle_emb_lr: float = 1e-4
    puzzle_emb_weight_decay: float = 1.0
    ema: bool = True
    ema_rate: float = 0.999
    loss: str = "stablemax"  # or "softmax"
    supervision: str = "carry"  # "carry": published per-sample carry; "per_batch": the paper's N_sup loop
    grad_accum: int = 1  # micro-batches per optimizer step (same global batch)
    epochs: int = 50000
    max_steps: int = 0  # 0 = derived from epochs
    max_minutes: float = 0.0  # 0 = no wall-clock limit
    eval_interval: int = 0  # optimizer steps between evaluations; 0 = only at the end
    checkpoint_interval: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 3
    log_interval: int = 10
    seed: int = 0
    out_dir: str = "runs/trm"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    compile: bool = False  # torch.compile the model's forward (whole model, as the published training script does)
    cuda_graphs: bool = False  # capture the fixed-shape supervision step as a CUDA graph (CUDA only)
    puzzle_emb_device: str = "same"  # "same" as the model, or "cpu": the table in pinned host memory

    CHECKS = {
        "optimizer": _one_of("adam_atan2", "adamw"),
        "lr": _float_range(0.0, 10.0),
        "beta1": _float_range(0.0, 1.0),
        "beta2": _float_range(0.0, 1.0),
        "weight_decay": _float_range(0.0, 100.0),
        "lr_warmup_steps": _int_range(0),
        "lr_min_ratio": _float_range(0.0, 1.0),
        "puzzle_emb_lr": _float_range(0.0, 100.0),
        "puzzle_emb_weight_decay": _float_range(0.0, 100.0),
        "ema": _BOOL,
        "ema_rate": _float_range(0.0, 1.0),
        "loss": _one_of("stablemax", "softmax"),
        "supervision": _one_of("carry", "per_batch"),
        "grad_accum": _int_range(1, 1 << 16),
        "epochs": _int_range(1),
        "max_steps": _int_range(0),
        "max_minutes": _float_range(0.0, 1e9),
        "eval_interval": _int_range(0),
        "checkpoint_interval": _int_range(0),
        "keep_checkpoints": _int_range(1, 1000),
        "log_interval": _int_range(1),
        "seed": _int_range(0, (1 << 63) - 1),
        "out_dir": _STR,
        "device": ((lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or v.startswith("cuda:"))),
                   "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        "compile": _BOOL,
        "cuda_graphs": _BOOL,
        "puzzle_emb_device": _one_of("same", "cpu"),
    }


@dataclass
class TRMConfig:
    """A whole run: `TRMConfig.preset("sudoku-mlp").override(["model.n=4"])`."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("model", "data", "train")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "TRMConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(sorted(PRESETS))}")
        config = cls.from_dict(PRESETS[name]["config"])
        config.name = name
        return config

    @classmethod
    def from_dict(cls, data: dict, base: "TRMConfig | None" = None, source: str = "config") -> "TRMConfig":
        """A config from nested dicts, on top of `base` (defaults when None). Unknown keys are errors."""
        config = copy.deepcopy(base) if base is not None else cls()
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of sections {cls.SECTIONS}, got {type(data).__name__}")
        for key, value in data.items():
            if key == "name":
                config.name = str(value)
                continue
            if key not in cls.SECTIONS:
                raise ValueError(f"{source}: unknown config section {key!r}; sections are {', '.join(cls.SECTIONS)}")
            if not isinstance(value, dict):
                raise ValueError(f"{source}: section {key!r} must be a mapping, got {value!r}")
            for sub, sub_value in value.items():
                config._set(f"{key}.{sub}", sub_value, source)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str, base: "TRMConfig | None" = None) -> "TRMConfig":
        """A config from a YAML or JSON file (same nested layout as `to_dict`), on top of `base`."""
        if not os.path.isfile(path):
            raise ValueError(f"config file {path!r} does not exist")
        with open(path) as f:
            text = f.read()
        try:
            data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path!r} is not valid JSON: {exc}") from None
        except yaml.YAMLError as exc:
            from trm_fast.files import yaml_error_text  # PyYAML's message spans several lines

            raise ValueError(f"config file {path!r} is not valid YAML: {yaml_error_text(exc)}") from None
        return cls.from_dict(data or {}, base=base, source=path)

    # -- overrides ---------------------------------------------------------------------------------
    def override(self, assignments: list[str]) -> "TRMConfig":
        """A copy with `section.field=value` assignments applied (values parsed as YAML scalars)."""
        config = copy.deepcopy(self)
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like section.field=value (e.g. model.n=4)")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            config._set(key.strip(), value, "override")
        config.validate()
        return config

    def _set(self, key: str, value: Any, source: str) -> None:
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in self.SECTIONS:
            raise ValueError(f"{source}: {key!r} is not a config field; use section.field with section in {self.SECTIONS}")
        section = getattr(self, parts[0])
        fields = {f.name: f for f in dataclasses.fields(section)}
        if parts[1] not in fields:
            raise ValueError(
                f"{source}: {key!r} is not a config field; fields of {parts[0]}: {', '.join(sorted(fields))}"
            )
        default = fields[parts[1]].default
        # YAML reads "1e-4" as a string and "3" as an int: coerce to the field's declared type where lossless.
        if isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        setattr(section, parts[1], value)

    # -- checks and export -------------------------------------------------------------------------
    def validate(self) -> None:
        for section in self.SECTIONS:
            getattr(self, section).validate()

    def to_dict(self) -> dict:
        return {"name": self.name, **{s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------------------- presets


def _published(model: dict, data: dict, train: dict) -> dict:
    base_train = dict(
        optimizer="adam_atan2", lr=1e-4, beta1=0.9, beta2=0.95, lr_warmup_steps=2000, lr_min_ratio=1.0,
        ema=True, ema_rate=0.999, loss="stablemax", supervision="carry",
    )
    base_model = dict(hidden_size=512, num_heads=8, expansion=4.0, num_blocks=2, T=3, puzzle_emb_len=16,
                      puzzle_emb_dim=512, halt_max_steps=16, halt_exploration_prob=0.1)
    return {"model": {**base_model, **model}, "data": {"global_batch_size": 768, **data}, "train": {**base_train, **train}}


_SUDOKU_TRAIN = dict(weight_decay=1.0, puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0, epochs=50000, eval_interval=5000)
_ARC_TRAIN = dict(weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, epochs=100000, eval_interval=10000)
# HRM as published: T = H_cycles 2, n = L_cycles 2, 4 + 4 attention blocks with RoPE, one puzzle token, Q-continue loss
_HRM_MODEL = dict(arch="hrm", T=2, n=2, hrm_high_blocks=4, hrm_low_blocks=4, mixer="attention", pos_encoding="rope",
                  puzzle_emb_len=1, act_continue=True)
_HRM_SUDOKU_TRAIN = dict(weight_decay=1.0, puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0, epochs=20000,
                         eval_interval=2000, ema=False)

PRESETS: dict[str, dict] = {
    "sudoku-mlp": {
        "about": "TRM-MLP on Sudoku-Extreme 1k x 1000 aug (published: 87.4% exact)",
        "config": _published(dict(vocab_size=11, seq_len=81, n=6, mixer="mlp", pos_encoding="none"),
                             dict(path="data/sudoku-extreme-1k-aug-1000"), _SUDOKU_TRAIN),
    },
    "sudoku-att": {
        "about": "TRM-attention on Sudoku-Extreme 1k x 1000 aug (published: 74.7% exact)",
        "config": _published(dict(vocab_size=11, seq_len=81, n=6, mixer="attention", pos_encoding="rope"),
                             dict(path="data/sudoku-extreme-1k-aug-1000"), _SUDOKU_TRAIN),
    },
    "maze": {
        "about": "TRM-attention on Maze-Hard 30x30 (published: 85.3% exact)",
        "config": _published(dict(vocab_size=6, seq_len=900, n=4, mixer="attention", pos_encoding="rope"),
                             dict(path="data/maze-30x30-hard-1k"), _SUDOKU_TRAIN),
    },
    "arc1": {
        "about": "TRM-attention on ARC-AGI-1 + ConceptARC (published: 44.6% pass@2)",
        "config": _published(dict(vocab_size=12, seq_len=900, n=4, mixer="attention", pos_encoding="rope"),
                             dict(path="data/arc1concept-aug-1000"), _ARC_TRAIN),
    },
    "arc2": {
        "about": "TRM-attention on ARC-AGI-2 + ConceptARC (published: 7.8% pass@2)",
        "config": _published(dict(vocab_size=12, seq_len=900, n=4, mixer="attention", pos_encoding="rope"),
                             dict(path="data/arc2concept-aug-1000"), _ARC_TRAIN),
    },
    # ---- HRM (sapientinc/HRM: config/arch/hrm_v1.yaml, config/cfg_pretrain.yaml and its README's full-scale runs;
    # no EMA in HRM's training) ----
    "hrm-sudoku": {
        "about": "HRM (two 4-block networks, 1-step gradient, Q-learning halting) on Sudoku-Extreme (published: 55.0%)",
        "config": _published(dict(vocab_size=11, seq_len=81, **_HRM_MODEL), dict(path="data/sudoku-extreme-1k-aug-1000"),
                             _HRM_SUDOKU_TRAIN),
    },
    "hrm-maze": {
        "about": "HRM on Maze-Hard 30x30 (published: 74.5% exact)",
        "config": _published(dict(vocab_size=6, seq_len=900, **_HRM_MODEL), dict(path="data/maze-30x30-hard-1k"),
                             _HRM_SUDOKU_TRAIN),
    },
    "hrm-arc1": {
        "about": "HRM on ARC-AGI-1 + ConceptARC (published: 40.3% pass@2)",
        "config": _published(dict(vocab_size=12, seq_len=900, **_HRM_MODEL), dict(path="data/arc1concept-aug-1000"),
                             dict(_ARC_TRAIN, ema=False)),
    },
    "hrm-arc2": {
        "about": "HRM on ARC-AGI-2 + ConceptARC (published: 5.0% pass@2)",
        "config": _published(dict(vocab_size=12, seq_len=900, **_HRM_MODEL), dict(path="data/arc2concept-aug-1000"),
                             dict(_ARC_TRAIN, ema=False)),
    },
    # ---- small presets for CPU demos and tests (generated data, built on first use) ----
    "sudoku4-tiny": {
        "about": "tiny TRM on generated 4x4 Sudoku: seconds on a CPU, for tests",
        "config": {
            # one head of 32 channels: the smallest head dim the Triton attention takes, so it runs on GPUs too
            "model": dict(vocab_size=6, seq_len=16, hidden_size=32, num_heads=1, num_blocks=2, T=2, n=2,
                          mixer="attention", pos_encoding="rope", puzzle_emb_len=2, puzzle_emb_dim=32,
                          halt_max_steps=4),
            "data": dict(recipe="sudoku4-tiny", path="", global_batch_size=32),
            "train": dict(lr=1e-3, lr_warmup_steps=10, weight_decay=0.1, puzzle_emb_lr=1e-3,
                          puzzle_emb_weight_decay=0.1, epochs=1, max_steps=20, ema_rate=0.99,
                          out_dir="runs/sudoku4-tiny"),
        },
    },
    "sudoku6-demo": {
        "about": "small TRM-MLP on generated 6x6 Sudoku: the README's CPU demo (minutes)",
        "config": {
            "model": dict(vocab_size=8, seq_len=36, hidden_size=64, num_heads=4, num_blocks=2, T=2, n=2,
                          mixer="mlp", pos_encoding="none", puzzle_emb_len=4, puzzle_emb_dim=64,
                          halt_max_steps=8),
            "data": dict(recipe="sudoku6-demo", path="", global_batch_size=128),
            "train": dict(lr=2e-3, lr_warmup_steps=100, weight_decay=0.1, puzzle_emb_lr=1e-3,
                          puzzle_emb_weight_decay=0.1, epochs=1000, max_steps=800,
                          ema_rate=0.995, eval_interval=400, out_dir="runs/sudoku6-demo"),
        },
    },
    "sudoku9-small": {
        "about": "a narrow TRM-MLP on generated 9x9 Sudoku, for experiments on one small GPU",
        "config": _published(dict(vocab_size=11, seq_len=81, hidden_size=128, num_heads=4, n=6, mixer="mlp",
                                  pos_encoding="none", puzzle_emb_dim=128),
                             dict(recipe="sudoku9-small", path="", global_batch_size=256),
                             dict(_SUDOKU_TRAIN, lr=3e-4, epochs=100, out_dir="runs/sudoku9-small")),
    },
}


def describe_presets() -> list[tuple[str, str]]:
    return [(name, spec["about"]) for name, spec in PRESETS.items()]
