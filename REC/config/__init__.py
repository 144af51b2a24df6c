from .config import (Config, ConfigError, ConfigLayer, ModelCatalog, load_config, parse_overrides,
                     split_config_files)

__all__ = ["Config", "ConfigError", "ConfigLayer", "ModelCatalog", "load_config", "parse_overrides",
           "split_config_files"]
