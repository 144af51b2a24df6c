from .optim import build_optimizer
from .trainer import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "Trainer", "build_optimizer"]
