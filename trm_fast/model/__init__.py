"""The TRM model: reference PyTorch math, with the fused Triton ops selected by `config.backend`."""
from trm_fast.model.trm import TRM, PuzzleEmbedding, StepOutput, count_parameters

__all__ = ["TRM", "PuzzleEmbedding", "StepOutput", "count_parameters"]
