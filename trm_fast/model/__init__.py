"""The TRM model: reference PyTorch math, with the fused Triton ops selected by `config.backend`."""
from trm_fast.config import ModelConfig
from trm_fast.model.trm import TRM, PuzzleEmbedding, StepOutput, count_parameters


def build_model(config: ModelConfig):
    """The model a config describes (TRM, its ablation variants, or HRM)."""
    if config.arch == "trm" and not config.separate_nets and config.grad_mode == "full" and config.latent == "dual":
        return TRM(config)
    raise ValueError(
        f"model.arch={config.arch!r}, separate_nets={config.separate_nets}, grad_mode={config.grad_mode!r}, "
        f"latent={config.latent!r} is not built by this version"
    )


__all__ = ["TRM", "PuzzleEmbedding", "StepOutput", "build_model", "count_parameters"]
