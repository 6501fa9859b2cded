"""Checkpoint interop with the published reference code (SamsungSAILMontreal/TinyRecursiveModels), both ways.

The published training script saves `model.state_dict()` of its loss-head wrapper after torch.compile, so keys read
`_orig_mod.model.inner.<name>` (without `_orig_mod.` when compilation was disabled), one file `step_<N>` per
evaluation, and writes the run's configuration beside them as `all_config.yaml`. Weights need no reshaping: the
fused qkv rows are [q heads | k heads | v heads], gate_up is [gate | up], every linear is (out, in). Mapping
(docs/checkpoints.md):

    published (after model.inner.)                  trm_fast
    embed_tokens.embedding_weight                   embed_tokens
    lm_head.weight                                  lm_head
    q_head.weight / q_head.bias                     q_head_weight / q_head_bias
    puzzle_emb.weights (buffer)                     puzzle_emb.weight (buffer)
    H_init / L_init (forward-dtype buffers)         y_init / z_init (fp32 for a float32 run, else bf16)
    L_level.layers.i.self_attn.qkv_proj.weight      net.blocks.i.mixer.w_qkv
    L_level.layers.i.self_attn.o_proj.weight        net.blocks.i.mixer.w_o
    L_level.layers.i.mlp_t.gate_up_proj.weight      net.blocks.i.mixer.w_gate_up
    L_level.layers.i.mlp_t.down_proj.weight         net.blocks.i.mixer.w_down
    L_level.layers.i.mlp.gate_up_proj.weight        net.blocks.i.mlp.w_gate_up
    L_level.layers.i.mlp.down_proj.weight           net.blocks.i.mlp.w_down
    H_level.layers.i.<same names>                   net_high.blocks.i.<same names>   (HRM: the high-level network)

HRM checkpoints of the same code base (recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1) convert too:
L_level is the low-level network (`net`), H_level the high-level one (`net_high`), H_init/L_init the initial z_H/z_L.

    trm-fast convert import --published ckpts/step_65000 [--preset sudoku-mlp] --out runs/imported
    trm-fast convert export --ckpt runs/sudoku6-demo --out exported/step_800 [--plain]
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # torch is imported by the commands that need it: building the CLI's parser stays cheap
    import torch

_FIXED = {
    "embed_tokens.embedding_weight": "embed_tokens",
    "lm_head.weight": "lm_head",
    "q_head.weight": "q_head_weight",
    "q_head.bias": "q_head_bias",
    "puzzle_emb.weights": "puzzle_emb.weight",
    "H_init": "y_init",
    "L_init": "z_init",
}
_BLOCK = {
    "self_attn.qkv_proj.weight": "mixer.w_qkv",
    "self_attn.o_proj.weight": "mixer.w_o",
    "mlp_t.gate_up_proj.weight": "mixer.w_gate_up",
    "mlp_t.down_proj.weight": "mixer.w_down",
    "mlp.gate_up_proj.weight": "mlp.w_gate_up",
    "mlp.down_proj.weight": "mlp.w_down",
}
_NETS = {"L": "net", "H": "net_high"}  # published level -> trm_fast network (H only in HRM)
# The published sparse embedding's per-batch buffers (non-persistent there, but harmless if a state_dict has them).
_TRANSIENT = ("puzzle_emb.local_weights", "puzzle_emb.local_ids")
_PREFIXES = ("_orig_mod.", "model.", "inner.")
COMPILED_PREFIX = "_orig_mod.model.inner."
PLAIN_PREFIX = "model.inner."


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def published_to_trm_fast(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Renames a published state_dict (with or without the torch.compile prefix) to trm_fast's names."""
    out = {}
    for key, value in state.items():
        name = _strip(key)
        if name in _TRANSIENT:
            continue
        if name in _FIXED:
            out[_FIXED[name]] = value
            continue
        m = re.fullmatch(r"([HL])_level\.layers\.(\d+)\.(.+)", name)
        if m and m.group(3) in _BLOCK:
            out[f"{_NETS[m.group(1)]}.blocks.{m.group(2)}.{_BLOCK[m.group(3)]}"] = value
            continue
        hint = ("learned positions (pos_encodings=learned), not supported" if name.startswith("embed_pos") else
                "another architecture")
        raise ValueError(f"{source}: key {key!r} has no trm_fast counterpart ({hint})")
    return out


def trm_fast_to_published(state: dict[str, torch.Tensor], compiled: bool = True) -> dict[str, torch.Tensor]:
    """trm_fast names -> the published layout `model.inner.<name>`, with `_orig_mod.` in front when `compiled`
    (what the published script writes, and what its --load_checkpoint expects, unless DISABLE_COMPILE is set)."""
    fixed = {v: k for k, v in _FIXED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    prefix = COMPILED_PREFIX if compiled else PLAIN_PREFIX
    out = {}
    for name, value in state.items():
        if name in fixed:
            out[prefix + fixed[name]] = value
            continue
        m = re.fullmatch(r"(net|net_high)\.blocks\.(\d+)\.(.+)", name)
        if m and m.group(3) in block:
            level = "H" if m.group(1) == "net_high" else "L"
            out[f"{prefix}{level}_level.layers.{m.group(2)}.{block[m.group(3)]}"] = value
            continue
        raise ValueError(f"tensor {name!r} has no counterpart in the published layout (only the published TRM "
                         "architecture can be exported: one network, no ablation switches)")
    return out


# ---------------------------------------------------------------------------------------------- configs


def config_from_published(all_config: dict, base, source: str = "all_config.yaml"):
    """A TRMConfig from the published run's all_config.yaml (Hydra dump), on top of `base`: architecture from
    its `arch` section, optimisation from the top level. Fields it lacks keep `base`'s values."""
    arch = all_config.get("arch") if isinstance(all_config, dict) else None
    if not isinstance(arch, dict):
        raise ValueError(f"{source}: no 'arch' section; is this the all_config.yaml of a published run?")
    name = str(arch.get("name", "")).lower()
    is_hrm = "hrm" in name
    if "trm" not in name and not is_hrm:
        raise ValueError(f"{source}: arch.name = {arch.get('name')!r} is neither the published TRM "
                         "(recursive_reasoning.trm@...) nor HRM (recursive_reasoning.hrm@...)")
    if arch.get("pos_encodings", "rope") not in ("rope", "none"):
        raise ValueError(f"{source}: arch.pos_encodings = {arch['pos_encodings']!r} is not supported (rope or none)")
    overrides = []

    def put(key, value):
        if value is not None:
            overrides.append(f"{key}={value}")

    put("model.T", arch.get("H_cycles"))
    put("model.n", arch.get("L_cycles"))
    if is_hrm:
        put("model.arch", "hrm")
        put("model.hrm_high_blocks", arch.get("H_layers"))
        put("model.hrm_low_blocks", arch.get("L_layers"))
        put("model.mixer", "attention")
        put("model.act_continue", "true")  # HRM's Q-learning halting; no_ACT_continue below may override it
    else:
        put("model.num_blocks", arch.get("L_layers"))
    put("model.hidden_size", arch.get("hidden_size"))
    put("model.num_heads", arch.get("num_heads"))
    put("model.expansion", arch.get("expansion"))
    ndim = arch.get("puzzle_emb_ndim")
    put("model.puzzle_emb_dim", arch.get("hidden_size") if isinstance(ndim, str) else ndim)  # "${.hidden_size}"
    put("model.puzzle_emb_len", arch.get("puzzle_emb_len"))
    if is_hrm and "puzzle_emb_len" not in arch and isinstance(arch.get("puzzle_emb_ndim"), int):
        put("model.puzzle_emb_len", -(-arch["puzzle_emb_ndim"] // int(arch.get("hidden_size", 512))) or None)
    put("model.pos_encoding", arch.get("pos_encodings"))
    # float32 keeps a float32 run's initial states in fp32 (model.trm.initial_state_dtype); auto computes in bf16 where
    # the published runs ran (and in fp32 on a CPU), with its states in bf16 as published
    forward_dtype = arch.get("forward_dtype")
    put("model.forward_dtype", "auto" if forward_dtype == "bfloat16" else forward_dtype)
    if "mlp_t" in arch:
        put("model.mixer", "mlp" if arch["mlp_t"] else "attention")
    put("model.halt_max_steps", arch.get("halt_max_steps"))
    put("model.halt_exploration_prob", arch.get("halt_exploration_prob"))
    if "no_ACT_continue" in arch:
        put("model.act_continue", str(not arch["no_ACT_continue"]).lower())
    loss = (arch.get("loss") or {}).get("loss_type", "")
    if loss:
        put("train.loss", "softmax" if "softmax" in loss else "stablemax")
    put("data.global_batch_size", all_config.get("global_batch_size"))
    for ours, theirs in (("epochs", "epochs"), ("lr", "lr"), ("lr_min_ratio", "lr_min_ratio"),
                         ("lr_warmup_steps", "lr_warmup_steps"), ("beta1", "beta1"), ("beta2", "beta2"),
                         ("weight_decay", "weight_decay"), ("puzzle_emb_lr", "puzzle_emb_lr"),
                         ("puzzle_emb_weight_decay", "puzzle_emb_weight_decay"), ("seed", "seed"),
                         ("ema_rate", "ema_rate")):
        put(f"train.{ours}", all_config.get(theirs))
    if "ema" in all_config:
        put("train.ema", str(bool(all_config["ema"])).lower())
    # the sequence length is the dataset's: from trm_fast's own section (our exports), else the run's first data path
    ours = all_config.get("trm_fast") or {}
    for key in ("seq_len", "vocab_size"):
        put(f"model.{key}", ours.get(key))
    put("data.recipe", ours.get("data_recipe"))
    data_paths = all_config.get("data_paths") or []
    data_path = ours.get("data_path") or (data_paths[0] if data_paths else None)
    meta = _dataset_meta(data_path)
    if data_path:
        put("data.path", data_path)
        if "seq_len" not in ours and meta:
            put("model.seq_len", meta.seq_len)
    # the published eval_interval counts epochs, and is also its sampler's epochs per iteration; ours counts steps
    epochs = all_config.get("eval_interval")
    if epochs:
        put("data.epochs_per_iter", epochs)
        batch = all_config.get("global_batch_size") or base.data.global_batch_size
        steps = ours.get("eval_interval_steps") or (-(-int(epochs * meta.examples_per_epoch) // batch) if meta else None)
        put("train.eval_interval", steps)
    try:
        return base.override(overrides)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _dataset_meta(data_path: str | None):
    """The training split's metadata (trm_fast.data.format.DatasetMetadata) of a built dataset, or None."""
    from trm_fast.data.format import read_metadata

    split = os.path.join(data_path or "", "train")
    if not data_path or not os.path.isfile(os.path.join(split, "dataset.json")):
        return None
    return read_metadata(split)


def _eval_interval_epochs(config) -> int | None:
    """Our eval interval (steps) in the published unit (epochs): data.epochs_per_iter where set (that is the
    published pairing), else converted through the dataset's size when it is on disk, else None."""
    if config.data.epochs_per_iter:
        return config.data.epochs_per_iter
    meta = _dataset_meta(config.data.path)
    if not config.train.eval_interval or not meta:
        return None
    return max(1, round(config.train.eval_interval * config.data.global_batch_size / meta.examples_per_epoch))


def config_to_published(config) -> dict:
    """The all_config.yaml the published scripts read for a trm_fast config (architecture and optimisation)."""
    m, t = config.model, config.train
    hrm = m.arch == "hrm"
    if not hrm and (m.separate_nets or m.grad_mode != "full" or m.latent != "dual"):
        raise ValueError("only the published TRM and HRM architectures can be exported (no ablation switches)")
    return {
        "arch": {
            "name": ("recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1" if hrm else
                     "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"),
            "loss": {"name": "losses@ACTLossHead",
                     "loss_type": "softmax_cross_entropy" if t.loss == "softmax" else "stablemax_cross_entropy"},
            "halt_exploration_prob": m.halt_exploration_prob, "halt_max_steps": m.halt_max_steps,
            "H_cycles": m.T, "L_cycles": m.n, "H_layers": m.hrm_high_blocks if hrm else 0,
            "L_layers": m.hrm_low_blocks if hrm else m.num_blocks,
            "hidden_size": m.hidden_size, "num_heads": m.num_heads, "expansion": m.expansion,
            "puzzle_emb_ndim": m.puzzle_emb_dim, "pos_encodings": m.pos_encoding,
            "forward_dtype": "bfloat16" if m.forward_dtype == "auto" else m.forward_dtype,
            "mlp_t": m.mixer == "mlp", "puzzle_emb_len": m.puzzle_emb_len, "no_ACT_continue": not m.act_continue,
        },
        "global_batch_size": config.data.global_batch_size, "epochs": t.epochs,
        "eval_interval": _eval_interval_epochs(config),
        "lr": t.lr, "lr_min_ratio": t.lr_min_ratio, "lr_warmup_steps": t.lr_warmup_steps, "beta1": t.beta1,
        "beta2": t.beta2, "weight_decay": t.weight_decay, "puzzle_emb_weight_decay": t.puzzle_emb_weight_decay,
        "puzzle_emb_lr": t.puzzle_emb_lr, "seed": t.seed, "ema": t.ema, "ema_rate": t.ema_rate,
        "data_paths": [config.data.path] if config.data.path else [],
        # ignored by the published scripts (extra top-level keys are dropped); read back by trm-fast convert import
        "trm_fast": {"seq_len": m.seq_len, "vocab_size": m.vocab_size, "data_path": config.data.path,
                     "data_recipe": config.data.recipe, "eval_interval_steps": t.eval_interval or None},
    }


# ---------------------------------------------------------------------------------------------- files


def _load_published_state(path: str) -> dict[str, torch.Tensor]:
    import torch

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file (a published checkpoint is a file like <checkpoint_path>/step_65000)")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        from trm_fast.checkpoint import torch_load_reason

        raise ValueError(f"{path}: not a readable PyTorch state_dict ({torch_load_reason(exc, path)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (names -> tensors), got {type(state).__name__}")
    return state


def import_published(path: str, out_dir: str, preset_config=None, all_config_path: str | None = None) -> str:
    """A published checkpoint file -> a trm_fast checkpoint (step 0) under `out_dir`. The architecture comes from
    the run's all_config.yaml (found beside the file, or given), on top of a preset when one is named."""
    from trm_fast.config import TRMConfig
    from trm_fast.model import build_model
    from trm_fast.checkpoint import save_checkpoint

    all_config_path = all_config_path or os.path.join(os.path.dirname(os.path.abspath(path)), "all_config.yaml")
    config = preset_config or TRMConfig()
    if os.path.isfile(all_config_path):
        with open(all_config_path) as f:
            try:
                config = config_from_published(yaml.safe_load(f) or {}, config, source=all_config_path)
            except yaml.YAMLError as exc:
                from trm_fast.files import yaml_error_text

                raise ValueError(f"{all_config_path}: not valid YAML ({yaml_error_text(exc)})") from None
    elif preset_config is None:
        raise ValueError(f"{path}: no all_config.yaml beside it ({all_config_path}): name the architecture with --preset")
    state = published_to_trm_fast(_load_published_state(path), source=path)
    for required in ("embed_tokens", "lm_head"):
        if required not in state:
            raise ValueError(f"{path}: no {required} tensor: not a TRM checkpoint")
    config = config.override([f"model.vocab_size={state['embed_tokens'].shape[0]}"])
    mix_down = state.get("net.blocks.0.mixer.w_down")
    if config.model.mixer == "mlp" and mix_down is not None:  # token mixing: its width is the full sequence
        width = mix_down.shape[0] - (config.model.puzzle_emb_len if config.model.puzzle_emb_dim else 0)
        config = config.override([f"model.seq_len={width}"])
    if "puzzle_emb.weight" in state:
        config = config.override([f"model.num_puzzle_identifiers={state['puzzle_emb.weight'].shape[0]}"])
    model = build_model(config.model)
    ours = model.state_dict()
    for name, value in state.items():
        if name not in ours:
            raise ValueError(f"{path}: tensor {name!r} does not exist in the {config.name!r} architecture "
                             "(wrong --preset or all_config.yaml?)")
        if tuple(ours[name].shape) != tuple(value.shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(value.shape)}, the {config.name!r} architecture "
                             f"expects {tuple(ours[name].shape)} (wrong --preset or all_config.yaml?)")
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing[:5])}")
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()})
    return save_checkpoint(out_dir, 0, model_state=model.state_dict(), ema_state=None,
                           train_state={"step": 0, "config": config.to_dict(), "imported_from": os.path.abspath(path)},
                           keep_last=1)


def export_published(ckpt: str, out_path: str, compiled: bool = True, use_ema: bool = True) -> str:
    """A trm_fast checkpoint (its EMA weights where saved) -> a published-layout state_dict file (torch.save), plus
    all_config.yaml beside it when none is there yet."""
    import torch

    from trm_fast.config import TRMConfig
    from trm_fast.checkpoint import load_checkpoint, resolve_checkpoint

    loaded = load_checkpoint(resolve_checkpoint(ckpt))
    state = dict(loaded["model"])
    if use_ema and loaded.get("ema"):
        state.update(loaded["ema"])
    published = trm_fast_to_published(state, compiled)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}"
    torch.save(published, tmp)
    os.replace(tmp, out_path)
    config_path = os.path.join(out_dir, "all_config.yaml")
    if "config" in loaded["state"] and not os.path.exists(config_path):
        from trm_fast.files import atomic_write_text

        atomic_write_text(config_path,
                          yaml.safe_dump(config_to_published(TRMConfig.from_dict(loaded["state"]["config"])), sort_keys=False))
    return out_path


def add_convert_subparser(sub) -> None:
    p = sub.add_parser("convert", help="import / export checkpoints of the published reference code")
    conv = p.add_subparsers(dest="direction", required=True)
    imp = conv.add_parser("import", help="a published checkpoint -> a trm_fast checkpoint folder")
    imp.add_argument("--published", required=True, help="published checkpoint file (torch.save of model.state_dict())")
    imp.add_argument("--preset", help="the preset of its architecture (default: read all_config.yaml beside the file)")
    imp.add_argument("--all-config", help="the published run's all_config.yaml, if not beside the file")
    imp.add_argument("--out", required=True, help="run folder to write the trm_fast checkpoint into")
    exp = conv.add_parser("export", help="a trm_fast checkpoint -> a published-layout state_dict")
    exp.add_argument("--ckpt", required=True, help="trm_fast checkpoint or run folder")
    exp.add_argument("--out", required=True, help="output file, e.g. exported/step_800")
    exp.add_argument("--plain", action="store_true",
                     help="keys without the torch.compile prefix _orig_mod. (for DISABLE_COMPILE=1 runs)")
    exp.add_argument("--compiled", action="store_true", help="keys with the _orig_mod. prefix (the default)")
    exp.add_argument("--no-ema", action="store_true", help="export the live weights instead of the EMA")
    p.set_defaults(func=run_convert_command)


def run_convert_command(args) -> int:
    from trm_fast.config import TRMConfig

    if args.direction == "import":
        preset = TRMConfig.preset(args.preset) if args.preset else None
        path = import_published(args.published, args.out, preset, args.all_config)
    else:
        if args.plain and args.compiled:
            raise ValueError("--plain and --compiled contradict each other")
        path = export_published(args.ckpt, args.out, compiled=not args.plain, use_ema=not args.no_ema)
    print(f"wrote {path}")
    return 0
