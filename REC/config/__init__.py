from .config import Config, ConfigError, ConfigLayer, ModelCatalog, load_config, parse_overrides

__all__ = ["Config", "ConfigError", "ConfigLayer", "ModelCatalog", "load_config", "parse_overrides"]
