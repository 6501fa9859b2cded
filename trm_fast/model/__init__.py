"""The TRM model: reference PyTorch math, with the fused Triton ops selected by `config.backend`; the paper's
ablation variants and HRM reuse its blocks."""
from trm_fast.config import ModelConfig
from trm_fast.model.hrm import HRM
from trm_fast.model.trm import TRM, PuzzleEmbedding, StepOutput, count_parameters
from trm_fast.model.variants import MultiScaleTRM, OneStepGradTRM, SeparateNetsTRM, SingleLatentTRM


def build_model(config: ModelConfig):
    """The model a config describes: TRM, one of its ablation variants (one switch at a time), or HRM."""
    if config.arch == "hrm":
        return HRM(config)
    switches = {
        "separate_nets": (config.separate_nets, SeparateNetsTRM),
        "grad_mode=one_step": (config.grad_mode == "one_step", OneStepGradTRM),
        "latent=single": (config.latent == "single", SingleLatentTRM),
        "latent=multiscale": (config.latent == "multiscale", MultiScaleTRM),
    }
    active = [(name, cls) for name, (on, cls) in switches.items() if on]
    if len(active) > 1:
        raise ValueError(f"model ablations {', '.join(n for n, _ in active)} cannot be combined: pick one")
    return active[0][1](config) if active else TRM(config)


__all__ = ["TRM", "HRM", "PuzzleEmbedding", "StepOutput", "build_model", "count_parameters", "SeparateNetsTRM",
           "OneStepGradTRM", "SingleLatentTRM", "MultiScaleTRM"]
