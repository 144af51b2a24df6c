"""Build one read-only run configuration from YAML files and command-line overrides.

Order of precedence (later wins): package defaults, the model's own defaults, each YAML file left to right,
then ``--key=value`` overrides. A mapping value given in a file replaces the earlier mapping whole (as the
original does, so ``optim_args`` never mixes its one-group and two-group forms); a dotted override
(``--optim_args.learning_rate=1e-3``) changes one entry. Every key is type-checked against the documented
defaults, and every error names the file, the key and what was expected.
"""
from __future__ import annotations

import copy
import difflib
import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import yaml

from ..utils.errors import UserError

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")
_DOC_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w]*):.*?#\s*(?P<type>[^:]+?):\s*(?P<doc>.*)$")


class ConfigError(UserError, ValueError):
    """A configuration problem found before any training starts."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice: plain YAML keeps the last value without a word, so a second
    ``learning_rate:`` further down a file would silently win (or a sweep grid would shrink to one trial)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, like the original's resolver; refuses a key given
    twice in one mapping; and reads ``2024-01-01`` as the string it was typed as (no config value is a date, and a
    ``datetime.date`` cannot travel through JSON to a sweep's trial)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:  # the mapping's own keys: a merged (<<) one may be overridden
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        where = f"on line {line}" if seen[key] == line else f"on lines {seen[key]} and {line}"
                        raise DuplicateKeyError(f"key {key!r} is given twice, {where}; keep one")
                    seen[key] = line
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error names it
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml_text(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None


# ----------------------------------------------------------------------------------------------- schema
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RANGED_TYPE = re.compile(r"^(?P<base>int|float|list\[(?:int|float)\]|dict\[float\])(?P<range>[\[(].*)?$")
_ONE_SIDED = re.compile(rf"^\((?P<op>>=|>|<=|<)\s*(?P<bound>{_NUM})\)$")
_INTERVAL = re.compile(rf"^(?P<left>[\[(])\s*(?P<lo>{_NUM})\s*,\s*(?P<hi>{_NUM})\s*(?P<right>[\])])$")
_PLURAL = {"int": "integers", "float": "finite numbers", "str": "strings"}


class Range:
    """Allowed values of a numeric key, written after its type: ``(>0)``, ``(>=-1)``, ``[0,1)``, ``(0,1]``."""

    def __init__(self, text: str):
        self.lo = self.hi = None
        self.lo_closed = self.hi_closed = False
        m = _ONE_SIDED.match(text)
        if m:
            op, bound = m.group("op"), float(m.group("bound"))
            if op.startswith(">"):
                self.lo, self.lo_closed = bound, op == ">="
            else:
                self.hi, self.hi_closed = bound, op == "<="
            self.text = f"{op} {_plain(bound)}"
            return
        m = _INTERVAL.match(text)
        if not m:
            raise ValueError(text)
        self.lo, self.hi = float(m.group("lo")), float(m.group("hi"))
        self.lo_closed, self.hi_closed = m.group("left") == "[", m.group("right") == "]"
        self.text = f"in {m.group('left')}{_plain(self.lo)}, {_plain(self.hi)}{m.group('right')}"

    def __contains__(self, v) -> bool:
        if self.lo is not None and not (v >= self.lo if self.lo_closed else v > self.lo):
            return False
        return self.hi is None or (v <= self.hi if self.hi_closed else v < self.hi)


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


class KeySpec:
    """Type, allowed range and meaning of one key, read from the inline comment of a defaults file.

    A numeric type may carry its range: ``int(>0)``, ``int(>=-1)?``, ``float[0,1)``, ``float(>0)?``,
    ``list[int](>0)`` (every element), ``dict[float](>=0)`` (every value). Floats must also be finite, so
    YAML's ``.nan`` and ``.inf`` never reach a comparison that would let them through."""

    def __init__(self, key: str, type_text: str, doc: str, default: Any, source: str, origin: str | None = None):
        self.key, self.doc, self.default, self.source = key, doc, default, source
        self.origin = origin or source  # how error messages name where the default comes from
        self.nullable = type_text.endswith("?")
        self.type_text = type_text.rstrip("?").strip()
        self.base, self.range = self.type_text, None
        m = _RANGED_TYPE.match(self.type_text)
        if m and m.group("range"):
            self.base = m.group("base")
            try:
                self.range = Range(m.group("range"))
            except ValueError:
                raise ConfigError(f"{source}: key {key!r} documents a range {m.group('range')!r} that is not "
                                  f"(>x), (>=x), (<x), (<=x) or an interval such as [0,1)") from None
        if not (self.base in ("int", "float", "bool", "str", "dict", "dict[float]", "any")
                or self.base.startswith("choice(") or re.fullmatch(r"list\[(int|float|str)\]", self.base)):
            raise ConfigError(f"{source}: key {key!r} documents unknown type {self.type_text!r}")

    def normalise(self, value: Any) -> Any:
        """YAML 1.1 reads a bare ``on`` / ``off`` as true / false; a choice offering "on" and "off" takes them back."""
        if isinstance(value, bool) and self.base.startswith("choice("):
            options = self.base[len("choice("):-1].split("|")
            if "on" in options and "off" in options:
                return "on" if value else "off"
        return value

    def check(self, value: Any) -> str | None:
        """Return what was expected when ``value`` does not fit, else None."""
        if value is None:
            return None if self.nullable else f"a value of type {self.type_text} (null is not allowed)"
        problem = self._check(value)
        return f"{problem} or null" if problem and self.nullable else problem

    def _check(self, value: Any) -> str | None:
        t, bound = self.base, f" {self.range.text}" if self.range else ""
        if t.startswith("choice("):
            options = t[len("choice("):-1].split("|")
            return None if str(value) in options else f"one of {options}"
        if t in ("int", "float"):
            return None if self._fits(t, value) else f"{'an integer' if t == 'int' else 'a finite number'}{bound}"
        if t == "bool":
            return None if isinstance(value, bool) else "true or false"
        if t == "str":
            return None if isinstance(value, str) else "a string"
        if t == "dict":
            return None if isinstance(value, dict) else "a mapping"
        each = f", each {self.range.text}" if self.range else ""
        if t.startswith("dict["):
            if not isinstance(value, dict):
                return f"a mapping of finite numbers{each}"
            bad = ", ".join(f"{k} = {v!r}" for k, v in value.items() if not self._fits("float", v))
            return f"a mapping of finite numbers{each} ({bad} is not)" if bad else None
        if t.startswith("list["):
            inner = t[len("list["):-1]
            items = value if isinstance(value, list) else [value]
            return None if all(self._fits(inner, v) for v in items) else f"a list of {_PLURAL[inner]}{each}"
        return None  # any

    def _fits(self, kind: str, v: Any) -> bool:
        if kind == "str":
            return isinstance(v, str)
        if not (_is_int(v) if kind == "int" else _is_number(v) and math.isfinite(v)):
            return False
        return self.range is None or v in self.range


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_defaults(path: str | Path) -> tuple[dict, dict[str, KeySpec]]:
    """Values and documented types of a defaults file (every top-level key must carry `# type: meaning`).
    Parsed once per version of the file (YAML parsing is most of a config build, which a sweep does per trial);
    the caller gets its own copy of the values to change."""
    path = Path(path)
    stat = path.stat()
    values, specs = _parsed_defaults(str(path), stat.st_mtime_ns, stat.st_size)
    return copy.deepcopy(values), dict(specs)


@functools.lru_cache(maxsize=64)
def _parsed_defaults(name: str, mtime_ns: int, size: int) -> tuple[dict, dict[str, KeySpec]]:
    path = Path(name)
    text = path.read_text()
    values = parse_yaml_text(text, str(path)) or {}
    specs: dict[str, KeySpec] = {}
    for line in text.splitlines():
        m = _DOC_LINE.match(line)
        if m and m.group("key") in values:
            specs[m.group("key")] = KeySpec(m.group("key"), m.group("type"), m.group("doc"),
                                            values[m.group("key")], str(path), _origin(path))
    undocumented = sorted(set(values) - set(specs))
    if undocumented:
        raise ConfigError(f"{path}: keys without a '# type: meaning' comment: {undocumented}")
    return values, specs


def _origin(path: Path) -> str:
    """How messages name a defaults file: 'defaults' for the package's, else its path from the repository."""
    if path.resolve() == DEFAULTS_FILE.resolve():
        return "defaults"
    try:
        return str(path.resolve().relative_to(DEFAULTS_FILE.resolve().parents[2]))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------- config
class Config(Mapping):
    """Read-only resolved configuration. ``cfg.key`` and ``cfg['key']`` both work; unknown keys raise."""

    def __init__(self, values: dict, sources: dict[str, str], specs: dict[str, KeySpec]):
        object.__setattr__(self, "_values", MappingProxyType(_freeze(values)))
        object.__setattr__(self, "_sources", dict(sources))
        object.__setattr__(self, "_specs", specs)

    def __getitem__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"config has no key {key!r}{_did_you_mean(key, self._values)}") from None

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(str(exc)) from None

    def __setattr__(self, key, value):
        raise TypeError("Config is read-only; change values in a YAML file or with --key=value")

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def source_of(self, key: str) -> str:
        """The file (or 'command line') that set ``key``; 'defaults' or the model's defaults file otherwise."""
        spec = self._specs.get(key)
        return self._sources.get(key, spec.origin if spec is not None else "defaults")

    def to_dict(self) -> dict:
        return _thaw(self._values)

    def dump_yaml(self) -> str:
        """Every key on one line, with the file (or command line) it came from as a comment."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=10**6)
        lines = []
        for line in text.splitlines():
            key = line.split(":", 1)[0]
            lines.append(f"{line}  # {self.source_of(key)}" if not line.startswith(" ") and key in self else line)
        return "\n".join(lines) + "\n"


def _freeze(v):
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v):
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


# ----------------------------------------------------------------------------------------------- loading
def parse_overrides(args: Iterable[str]) -> list[tuple[str, Any]]:
    """``--a.b=value`` pairs, the value typed by YAML parsing (``--lr=1e-3`` is a float, ``--x=[1,2]`` a list)."""
    pairs = []
    for arg in args:
        body = arg[2:] if arg.startswith("--") else None
        if not body or "=" not in body:
            raise ConfigError(f"command line: cannot read {arg!r}; overrides look like --key=value "
                              f"(dotted keys for nested values: --optim_args.learning_rate=1e-3)")
        key, raw = body.split("=", 1)
        pairs.append((key, parse_yaml_text(raw, f"command line --{key}") if raw != "" else None))
    return pairs


def split_config_files(files: Iterable[str], overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    """``--config_file``'s list as argparse left it, and the overrides: argparse reads an argument that contains
    a space (``"--optim_args={learning_rate: 1e-3}"``, or a sweep trial's list value) as a positional, so it lands
    in the ``nargs='+'`` file list; every ``--`` entry there is an override, in its place before the others."""
    files = list(files)
    return [f for f in files if not f.startswith("--")], [f for f in files if f.startswith("--")] + list(overrides)


@dataclass(frozen=True)
class ConfigLayer:
    """Keys given in memory rather than in a file (a tool's own settings); ``name`` is how messages name it."""
    name: str
    values: Mapping


@dataclass(frozen=True)
class ModelCatalog:
    """What the config layer needs to know of the models, passed in so that it never imports model code:
    a model's defaults files (its ancestors' first; None: unknown name), the known names, and whether its items are encoded from
    cover images (only those models take an image encoder's settings)."""
    defaults_files: Callable[[str], tuple[str | Path, ...] | None]
    names: Callable[[], list[str]]
    encodes_covers: Callable[[str], bool]


INHERIT_KEY = "inherit"


def load_config(layers: Iterable[str | Path | ConfigLayer], overrides: Iterable[str] = (),
                models: ModelCatalog | None = None, require_model: bool = True) -> Config:
    """Merge defaults, the model's defaults, ``layers`` (YAML files or in-memory ``ConfigLayer``) and ``overrides``
    into a checked Config.

    A file may name others it builds on with ``inherit: <path>`` (relative to the file; a list is merged left to
    right); their keys come first and the file's own keys override them. ``require_model=False`` serves tools
    that read only data and encoder keys (feature extraction): without a model, no model keys exist and the
    training-only checks (``optim_args``) are skipped.
    """
    values, specs = read_defaults(DEFAULTS_FILE)
    sources: dict[str, str] = {}
    read: list[tuple[str, dict]] = []
    for layer in layers:
        if isinstance(layer, ConfigLayer):
            read.append((layer.name, dict(layer.values)))
        else:
            read.extend(_read_file(Path(layer), ()))
    override_pairs = parse_overrides(overrides)

    # The model decides which extra keys exist, so find it first (files, then overrides).
    model = values.get("model")
    for _, data in read:
        model = data.get("model", model)
    for key, val in override_pairs:
        model = val if key == "model" else model
    if not model and require_model:
        raise ConfigError("no model given: set `model: <name>` in a config file or pass --model=<name>")
    if model and models is not None:
        paths = models.defaults_files(str(model))
        if paths is None:
            known = models.names()
            raise ConfigError(f"unknown model {model!r}{_did_you_mean(str(model), known)}; known models: {known}")
        package = set(specs)
        for path in paths:  # the model's ancestors' defaults first: a subclass's file changes what differs
            model_values, model_specs = read_defaults(path)
            clash = sorted(set(model_specs) & package)
            if clash:
                raise ConfigError(f"{path}: redefines package keys {clash}")
            values.update(model_values)
            specs.update(model_specs)
        if not models.encodes_covers(str(model)):
            _refuse_encoder_layers(str(model), read, override_pairs)

    for source, data in read:
        for key, val in data.items():
            _assign(values, sources, specs, key, val, source)
    for key, val in override_pairs:
        _assign(values, sources, specs, key, val, "command line")

    for key, spec in specs.items():
        if key == "model" and not model:  # only when no model is required
            continue
        values[key] = spec.normalise(values.get(key))
        problem = spec.check(values.get(key))
        if problem:
            raise ConfigError(f"{sources.get(key, spec.origin)}: key {key!r} = {values.get(key)!r}; expected {problem}")
    values["metrics"] = _as_list(values["metrics"])
    values["topk"] = _as_list(values["topk"])
    _check_semantics(values, sources, trains=bool(model))
    return Config(values, sources, specs)


def _read_file(path: Path, chain: tuple[Path, ...]) -> list[tuple[str, dict]]:
    """The layers of one YAML file: what it inherits (recursively, in order), then its own keys."""
    name = os.path.normpath(str(path))
    if not path.is_file():
        via = f" (inherited by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {name!r}{via} does not exist (resolved: {path.resolve()})")
    if path.resolve() in [c.resolve() for c in chain]:
        cycle = " -> ".join(os.path.normpath(str(c)) for c in (*chain, path))
        raise ConfigError(f"{name}: '{INHERIT_KEY}' forms a cycle: {cycle}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {name!r}: cannot be read as UTF-8 text ({type(exc).__name__}); is it a "
                          f"YAML file?") from None
    data = parse_yaml_text(text, name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of key: value at the top level, got {type(data).__name__}")
    parents = data.pop(INHERIT_KEY, None)
    parents = [] if parents is None else parents if isinstance(parents, list) else [parents]
    layers: list[tuple[str, dict]] = []
    for parent in parents:
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{name}: key '{INHERIT_KEY}' = {parent!r}; expected the path of another YAML file, "
                              f"relative to this one (e.g. ../IDNet/sasrec.yaml)")
        layers.extend(_read_file(path.parent / parent, (*chain, path)))
    layers.append((name, data))
    return layers


def _refuse_encoder_layers(model: str, layers: list[tuple[str, dict]], override_pairs: list) -> None:
    """An image encoder's settings with a model whose items are ID embeddings would be ignored, or end as a
    half-two-group ``optim_args``; say what was combined instead (e.g. IDNet/sasrec.yaml + overall/ViT.yaml)."""
    for source, data in [*layers, *(("command line", {k: v}) for k, v in override_pairs)]:
        keys = [k for k, v in data.items()
                if (k == "encoder" and v is not None) or k.startswith("optim_args.modal_")]
        if keys:
            raise ConfigError(f"{source}: sets image-encoder keys {keys}, but model {model!r} has no image encoder "
                              f"(its items are ID embeddings or fixed features): an encoder file such as "
                              f"overall/<encoder>.yaml goes with a PixelNet model file (PixelNet/<model>.yaml); "
                              f"an ID model file goes with overall/ID.yaml")


def _assign(values: dict, sources: dict, specs: dict, key: str, val: Any, source: str) -> None:
    """``key: value`` replaces the whole value (a mapping too, as the original); a dotted ``a.b: value`` (in a file
    or on the command line) changes one entry of mapping ``a`` and keeps the rest, so that e.g. an encoder's file
    can set ``optim_args.modal_lr`` without erasing the recommender's ``rec_lr`` set by the model's file."""
    top, _, rest = key.partition(".")
    _check_known(top, specs, source)
    if rest:
        current = values.get(top)
        if not isinstance(current, dict):
            raise ConfigError(f"{source}: {key}: {top!r} is not a mapping, so it has no entry {rest!r}")
        current = dict(current)
        _set_dotted(current, rest.split("."), val)
        val = current
    values[top] = val
    sources[top] = source


# Keys that changed name or meaning: their old spelling gets a message that says what to write instead.
RENAMED_KEYS = {
    "encoder_param_prefix": "encoder_modules, a list of module names (e.g. [visual_encoder]); a parameter joins the "
                            "image encoder's optimizer group when one of the parts of its dotted name is in that list",
}


def _check_known(key: str, specs: dict, source: str) -> None:
    if key in RENAMED_KEYS and key not in specs:
        raise ConfigError(f"{source}: key {key!r} is now {RENAMED_KEYS[key]}")
    if key not in specs:
        raise ConfigError(f"{source}: unknown key {key!r}{_did_you_mean(key, specs)}")


def _set_dotted(d: dict, parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        d[p] = dict(d.get(p) or {})
        d = d[p]
    d[parts[-1]] = value


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


OPTIM_FORMS = ({"learning_rate", "weight_decay"}, {"modal_lr", "modal_decay", "rec_lr", "rec_decay"})


def _check_semantics(values: dict, sources: dict, trains: bool) -> None:
    """Checks that span keys or look inside values; each names the key and what was expected. A single key's
    type and range are declared beside its default (KeySpec) and checked before these. ``trains``: a model is
    named, so the optimizer's settings matter."""
    where = lambda k: sources.get(k, "defaults")  # noqa: E731
    optim = values["optim_args"]  # its values' type and range are declared in defaults.yaml
    if trains and set(optim) not in OPTIM_FORMS:
        raise ConfigError(f"{where('optim_args')}: key 'optim_args' = {optim!r}; expected numbers under exactly "
                          f"{sorted(OPTIM_FORMS[0])} (one setting for every parameter) or "
                          f"{sorted(OPTIM_FORMS[1])} (the image encoder's group and the rest's); a dotted "
                          f"optim_args.<entry> changes one entry of the mapping set before it and cannot turn one "
                          f"form into the other")
    name, _, k = str(values["valid_metric"]).partition("@")
    metrics_lower = [m.lower() for m in values["metrics"]]
    if name.lower() not in metrics_lower or not k.isdigit() or int(k) not in values["topk"]:
        raise ConfigError(f"{where('valid_metric')}: key 'valid_metric' = {values['valid_metric']!r}; expected "
                          f"<metric>@<k> with the metric in metrics={values['metrics']} and k in topk={values['topk']}")
    _check_protocols(values, where)


def _check_protocols(values: dict, where) -> None:
    edges = list(values["popularity_buckets"])
    if edges and (edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:]))):
        raise ConfigError(f"{where('popularity_buckets')}: key 'popularity_buckets' = {edges}; expected [] or "
                          f"strictly increasing lower edges starting at 0 (so the buckets cover every user)")
    if values["cold_item_ratio"] > 0 and values["cold_item_file"]:
        raise ConfigError(f"keys 'cold_item_ratio' ({where('cold_item_ratio')}) and 'cold_item_file' "
                          f"({where('cold_item_file')}) both choose the held-out items; set one of them")
