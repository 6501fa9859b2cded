"""The configuration named on a command line by --preset, --config and --set, for `trm-fast train` and
`trm-fast compare` alike."""
from __future__ import annotations

from trm_fast.config import TRMConfig


def config_from_flags(preset: str | None, config_file: str | None, overrides: list[str]) -> TRMConfig:
    """A preset (the default configuration when None), then a YAML/JSON file of overrides, then SECTION.FIELD=VALUE
    overrides in order; every step validated by TRMConfig."""
    config = TRMConfig.preset(preset) if preset else TRMConfig()
    if config_file:
        config = TRMConfig.from_file(config_file, base=config)
    return config.override(list(overrides))
