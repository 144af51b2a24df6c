"""Encoder registry: one decorator fills a name -> spec map (timm's ``register_model`` pattern).

``@register_encoder("swin_t", ...)`` on a builder makes ``encoder: swin_t`` pick it; a name family such as
``timm/<model>`` registers one spec factory for a prefix. An unknown name lists the known ones.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from REC.config import ConfigError
from REC.utils.registry import Registry

from .backbone import Backbone
from .weights import Weights

READOUTS = ("cls", "mean", "pool")


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    backbone: str                    # the library model it builds, for tables and logs
    readouts: tuple[str, ...]        # what it supports; the first is its shipped readout
    trainable_blocks: int            # the original's shipped freezing: train the last N blocks; -1 = everything
    build: Callable[[str, Weights], Backbone]  # build(readout, weights)
    default_init_readouts: tuple[str, ...] = ()  # readouts whose head keeps PyTorch's Linear init, as in the original

    @property
    def default_readout(self) -> str:
        return self.readouts[0]


class UnknownEncoderError(ConfigError):
    pass


ENCODERS = Registry("encoder", error=UnknownEncoderError)  # name -> EncoderSpec
_FAMILIES: dict[str, Callable[[str], EncoderSpec]] = {}  # name prefix -> spec factory for the rest of the name


def register_encoder(name: str, *, backbone: str, readouts, trainable_blocks: int, default_init_readouts=()):
    bad = [r for r in readouts if r not in READOUTS]
    if not readouts or bad:
        raise ValueError(f"encoder {name}: readouts must be a non-empty subset of {READOUTS}, got {readouts}")

    def deco(build):
        ENCODERS.add(name, EncoderSpec(name, backbone, tuple(readouts), int(trainable_blocks), build,
                                       tuple(default_init_readouts)))
        return build
    return deco


def register_encoder_family(prefix: str):
    """``@register_encoder_family("timm/")`` on ``factory(rest_of_name) -> EncoderSpec``."""
    def deco(factory):
        if prefix in _FAMILIES:
            raise ValueError(f"encoder family {prefix!r} is already registered")
        _FAMILIES[prefix] = factory
        return factory
    return deco


def list_encoders() -> list[str]:
    """The registered encoder names (families such as ``timm/<model>`` take any name after their prefix)."""
    return ENCODERS.names()


def get_encoder_spec(name: str) -> EncoderSpec:
    if name in ENCODERS:
        return ENCODERS.get(name)
    for prefix, factory in _FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return factory(name[len(prefix):])
    families = ", ".join(f"{p}<name>" for p in _FAMILIES)
    raise UnknownEncoderError(ENCODERS.unknown(name) + (f", or {families}" if families else ""))
