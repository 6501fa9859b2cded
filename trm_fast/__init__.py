"""trm_fast: fast, lean training and inference of Tiny Recursive Models (arXiv:2510.04871)."""
from trm_fast.config import PRESETS, DataConfig, ModelConfig, TrainConfig, TRMConfig

__version__ = "0.1.0"

__all__ = ["TRMConfig", "ModelConfig", "DataConfig", "TrainConfig", "PRESETS", "__version__"]
