"""Checkpoint interop with the published reference code (SamsungSAILMontreal/TinyRecursiveModels).

The published training script saves `model.state_dict()` of its loss head wrapper, so keys read
`model.inner.<name>`, with `_orig_mod.` in front when the model ran under torch.compile. Mapping (docs/checkpoints.md):

    published (after model.inner.)                  trm_fast
    embed_tokens.embedding_weight                   embed_tokens
    lm_head.weight                                  lm_head
    q_head.weight / q_head.bias                     q_head_weight / q_head_bias
    puzzle_emb.weights                              puzzle_emb.weight
    H_init / L_init                                 y_init / z_init
    L_level.layers.i.self_attn.qkv_proj.weight      net.blocks.i.mixer.w_qkv
    L_level.layers.i.self_attn.o_proj.weight        net.blocks.i.mixer.w_o
    L_level.layers.i.mlp_t.gate_up_proj.weight      net.blocks.i.mixer.w_gate_up
    L_level.layers.i.mlp_t.down_proj.weight         net.blocks.i.mixer.w_down
    L_level.layers.i.mlp.gate_up_proj.weight        net.blocks.i.mlp.w_gate_up
    L_level.layers.i.mlp.down_proj.weight           net.blocks.i.mlp.w_down

    trm-fast convert import --published step_65000 --preset sudoku-mlp --out runs/imported
    trm-fast convert export --ckpt runs/sudoku6-demo --out published.pt [--compiled]
"""
from __future__ import annotations

import os
import re

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
# Buffers of the published sparse embedding that only hold the last batch: not part of the model.
_TRANSIENT = ("puzzle_emb.local_weights", "puzzle_emb.local_ids")
_PREFIXES = ("_orig_mod.", "model.", "inner.")


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
        m = re.fullmatch(r"L_level\.layers\.(\d+)\.(.+)", name)
        if m and m.group(2) in _BLOCK:
            out[f"net.blocks.{m.group(1)}.{_BLOCK[m.group(2)]}"] = value
            continue
        raise ValueError(f"{source}: key {key!r} has no trm_fast counterpart (another architecture, e.g. HRM or "
                         "learned positions?)")
    return out


def trm_fast_to_published(state: dict[str, torch.Tensor], compiled: bool = False) -> dict[str, torch.Tensor]:
    """trm_fast names -> the published layout `model.inner.<name>` (`_orig_mod.` in front with compiled)."""
    fixed = {v: k for k, v in _FIXED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    prefix = ("_orig_mod." if compiled else "") + "model.inner."
    out = {}
    for name, value in state.items():
        if name in fixed:
            out[prefix + fixed[name]] = value
            continue
        m = re.fullmatch(r"net\.blocks\.(\d+)\.(.+)", name)
        if m and m.group(2) in block:
            out[f"{prefix}L_level.layers.{m.group(1)}.{block[m.group(2)]}"] = value
            continue
        raise ValueError(f"tensor {name!r} has no counterpart in the published layout")
    return out


def _load_any(path: str) -> dict[str, torch.Tensor]:
    if os.path.isdir(path):
        from trm_fast.eval.inference import resolve_checkpoint
        from trm_fast.train.checkpoint import load_checkpoint

        return load_checkpoint(resolve_checkpoint(path))["model"]
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


def import_published(path: str, preset_config, out_dir: str) -> str:
    """Builds the preset's model from a published checkpoint and writes it as a trm_fast checkpoint."""
    from trm_fast.model import build_model
    from trm_fast.train.checkpoint import check_compatible, save_checkpoint

    state = published_to_trm_fast(_load_any(path), source=path)
    config = preset_config
    if "puzzle_emb.weight" in state:
        config = config.override([f"model.num_puzzle_identifiers={state['puzzle_emb.weight'].shape[0]}"])
    vocab = state["embed_tokens"].shape[0]
    config = config.override([f"model.vocab_size={vocab}"])
    model = build_model(config.model)
    ours = model.state_dict()
    for name, value in state.items():
        if name not in ours:
            raise ValueError(f"{path}: tensor {name!r} does not exist in preset {config.name!r}")
        if tuple(ours[name].shape) != tuple(value.shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(value.shape)}, preset {config.name!r} expects "
                             f"{tuple(ours[name].shape)} (wrong --preset?)")
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {', '.join(missing[:5])}")
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()})
    return save_checkpoint(out_dir, 0, model_state=model.state_dict(), ema_state=None,
                           train_state={"step": 0, "config": config.to_dict(), "imported_from": os.path.abspath(path)},
                           keep_last=1)


def export_published(ckpt: str, out_path: str, compiled: bool = False, use_ema: bool = True) -> str:
    """Writes a trm_fast checkpoint (EMA weights where saved) as a published-layout state_dict (torch.save)."""
    from trm_fast.eval.inference import resolve_checkpoint
    from trm_fast.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(resolve_checkpoint(ckpt))
    state = dict(loaded["model"])
    if use_ema and loaded.get("ema"):
        state.update(loaded["ema"])
    tmp = out_path + ".tmp"
    torch.save(trm_fast_to_published(state, compiled), tmp)
    os.replace(tmp, out_path)
    return out_path


def add_convert_subparser(sub) -> None:
    p = sub.add_parser("convert", help="import / export checkpoints of the published reference code")
    conv = p.add_subparsers(dest="direction", required=True)
    imp = conv.add_parser("import", help="a published checkpoint -> a trm_fast checkpoint folder")
    imp.add_argument("--published", required=True, help="published checkpoint file (torch.save of model.state_dict())")
    imp.add_argument("--preset", required=True, help="the preset whose architecture the checkpoint has")
    imp.add_argument("--out", required=True, help="run folder to write the trm_fast checkpoint into")
    exp = conv.add_parser("export", help="a trm_fast checkpoint -> a published-layout state_dict")
    exp.add_argument("--ckpt", required=True, help="trm_fast checkpoint or run folder")
    exp.add_argument("--out", required=True, help="output file (.pt)")
    exp.add_argument("--compiled", action="store_true", help="prefix keys with _orig_mod. (torch.compile layout)")
    exp.add_argument("--no-ema", action="store_true", help="export the live weights instead of the EMA")
    p.set_defaults(func=run_convert_command)


def run_convert_command(args) -> int:
    from trm_fast.config import TRMConfig

    if args.direction == "import":
        path = import_published(args.published, TRMConfig.preset(args.preset), args.out)
    else:
        path = export_published(args.ckpt, args.out, compiled=args.compiled, use_ema=not args.no_ema)
    print(f"wrote {path}")
    return 0
