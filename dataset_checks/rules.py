"""rules.yaml: parsed once, validated, and turned into a typed `Rules` object.

Every error names the file, the key, what was expected and what was found, so a
user can fix a broken rules file without reading code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the environment: yaml is Any to mypy

from .discover import KNOWN_VECTOR_KEYS  # noqa: F401  (importable from here as before)
from .threshold import DEFAULT_THRESHOLD  # noqa: F401  (importable from here as before)
from .index_rules import SCAN_KINDS, IndexRules  # noqa: F401  (IndexRules: importable from here)

if TYPE_CHECKING:  # the registry is imported when first needed (see check_settings)
    from .checks import Check, CheckSettings



class _Text(str):
    """A description rather than a value: shown without quotes in error messages."""

    def __repr__(self) -> str:
        return str(self)


# What a rules error shows of a value or a key: at most this many characters, whatever the
# value's size or nesting (a repr of an alias bomb's value would take minutes and gigabytes).
SHOWN_CHARS = 200


def brief(value: Any, room: int = SHOWN_CHARS, depth: int = 3) -> str:
    """repr(value) cut to about `room` characters, in work bounded by `room` and `depth` (never a
    full repr of a large or deep value; lists and mappings show their first items, then ...)."""
    if isinstance(value, (list, tuple, dict)):
        opening, closing = ("{", "}") if isinstance(value, dict) else \
            ("(", ")") if isinstance(value, tuple) else ("[", "]")
        if depth <= 0:
            return opening + "..." + closing if value else opening + closing
        parts, used = [], 2
        for item in (value.items() if isinstance(value, dict) else value):
            if used >= room:
                parts.append("...")
                break
            if isinstance(value, dict):
                part = brief(item[0], room - used, depth - 1) + ": " + brief(item[1], room - used, depth - 1)
            else:
                part = brief(item, room - used, depth - 1)
            parts.append(part)
            used += len(part) + 2
        return opening + ", ".join(parts) + ("," if isinstance(value, tuple) and len(parts) == 1 else "") + closing
    if isinstance(value, (str, bytes)) and not isinstance(value, _Text) and len(value) > room:
        return repr(value[:room])[:-1] + "..." + repr(value[:1])[-1]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * room:
        return f"a whole number of {value.bit_length()} bits"
    return _cut(repr(value), room)


def _cut(text: str, room: int = SHOWN_CHARS) -> str:
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


class RulesError(ValueError):
    """A rules.yaml that cannot be used; the message is meant for the user as is.

    The message is one bounded line: the key is shown as names are (dataset_checks.text), the
    value found by `brief` (at most SHOWN_CHARS characters)."""

    def __init__(self, file: str | Path | None, key: str, expected: str, found: Any):
        from .text import shown

        self.file, self.key, self.expected, self.found = file, key, expected, found
        where = f"{shown(str(file))}: " if file else ""
        super().__init__(f"{where}key '{_cut(shown(str(key)))}': expected {expected}, found {brief(found)}")


@dataclass(frozen=True)
class AllowedPair:
    identities: frozenset[str]
    reason: str

    def covers(self, a: str, b: str) -> bool:
        return frozenset((a, b)) == self.identities


@dataclass(frozen=True)
class CalibrationRules:
    """How `threshold: auto` is chosen from the data (dataset_checks.threshold)."""

    chance_pairs: float = 1.0  # expected different-person pairs at or above the threshold, whole dataset
    ceiling: float | None = None  # None: auto (0.98 raw, 0.90 centred): copies must always fail
    sample_pairs: int = 2_000_000  # random cross-folder pairs the tail is fitted on
    seed: int = 0


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineRules:
    """Where the search runs (rules `engine:`, --engine): in this process, or on a Ray cluster."""

    type: str = "local"
    address: str | None = None  # ray: None starts a local cluster; "auto" or "ray://host:port" joins one
    ranges: int | None = None  # ray: inverted-list ranges (tasks); None: 4 per worker CPU


# -- incremental: begin --
@dataclass(frozen=True)
class IncrementalRules:
    """Incremental runs (dataset_checks.incremental): only what changed since the last run is
    searched, against everything; the result is the full run's."""

    enabled: bool = True  # false: every run is a full one and no search state is kept
    # changed faces above which a full run is done instead: None (auto) estimates where a full
    # run becomes cheaper; a whole number of faces; or a share of the table (max_changed_share)
    max_changed: int | None = None
    max_changed_share: float | None = None
    # the search gathers pairs this far below the threshold, so that `threshold: auto` moving
    # down a little between runs does not force a full run; None (auto): 0.01 when the threshold
    # is auto, else 0
    margin: float | None = None
    max_imbalance_growth: float = 1.5  # the stored IVF index is retrained past this list balance...
    max_nprobe_growth: float = 2.0  # ...or when calibration asks this many times its trained nprobe
# -- incremental: end --


@dataclass(frozen=True)
class Rules:
    source: Path | None = None
    dataset: Path | None = None
    vector_key: str | None = None  # None: whichever known key is present
    threshold: float = DEFAULT_THRESHOLD
    index: IndexRules = field(default_factory=IndexRules)
    identity_thresholds: dict[str, float] = field(default_factory=dict)
    allow: tuple[AllowedPair, ...] = ()
    bad_input: str = "fail"  # fail | warn | info (checks.bad_input)
    # From images to embeddings (dataset_checks.embed): used for folders with images.
    embedder: str = "dlib"  # built-in "dlib" or "package.module:callable"
    # threshold: auto (the default of a rules file and of no rules file, as in the shipped
    # rules.yaml): chosen from the data, with the model's default as the floor. A Rules built in
    # code with an explicit threshold is not auto.
    threshold_auto: bool = False
    threshold_from: str = "built-in default"  # where the threshold setting came from (header, report)
    calibration: CalibrationRules = field(default_factory=CalibrationRules)
    # per check (dataset_checks.checks): enabled, severity and its parameters; {} in code means
    # every check with its defaults (checks_settings() fills them in)
    checks: dict[str, CheckSettings] = field(default_factory=dict)
    against: tuple[Path, ...] = ()  # other dataset roots checked for leakage (rules `against:`, --against)

    def check_settings(self, name: str) -> CheckSettings:
        """A check's resolved settings: from the rules file, else the check's defaults."""
        if name in self.checks:
            return self.checks[name]
        from .checks import get

        return default_settings(get(name))
    centre: bool = False  # subtract the dataset mean before normalising (embeddings.centre)
    cache_dir: Path | None = None  # None: .dataset_checks_cache/ in the rootdir (or cwd)
    embed_workers: int | None = None  # None: one process per core
    memory: int | None = None  # bytes the run keeps to (rules `memory:`, --memory); None: half the machine
    engine: "EngineRules" = field(default_factory=lambda: EngineRules())
    incremental: IncrementalRules = field(default_factory=IncrementalRules)  # incremental
    # optional outputs asked for (rules `outputs:`), e.g. face01_pairs; which names exist is the
    # sinks' registry's to say (sinks.planned_files refuses an unknown one)
    outputs: tuple[str, ...] = ()

    def threshold_for(self, identity: str) -> float:
        return self.identity_thresholds.get(identity, self.threshold)

    @property
    def min_threshold(self) -> float:
        """The search radius: low enough for every per-identity override."""
        return min([self.threshold, *self.identity_thresholds.values()])

    def allowed(self, a: str, b: str) -> AllowedPair | None:
        for pair in self.allow:
            if pair.covers(a, b):
                return pair
        return None


# -- validation helpers -------------------------------------------------------


class _Checker:
    def __init__(self, file: Path | None):
        self.file = file

    def fail(self, key: str, expected: str, found: Any) -> RulesError:
        return RulesError(self.file, key, expected, found)

    def mapping(self, key: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping", value)
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(where, f"one of the known keys ({', '.join(sorted(allowed))})", _Text(f"unknown key {k!r}"))
        return value

    def threshold(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "a number in [-1, 1]", value)
        number = float(value)
        if not math.isfinite(number) or not -1.0 <= number <= 1.0:
            raise self.fail(key, "a number in [-1, 1]", number)
        return number

    def optional_int(self, key: str, value: Any, minimum: int) -> int | None:
        if value is None or value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"'auto' or a whole number >= {minimum}", value)
        return value

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:  # (no other type equals a str)
            raise self.fail(key, "one of " + ", ".join(choices), value)
        return value


_TOP_KEYS = {"dataset", "embeddings", "embedder", "threshold", "calibration", "index", "identity_thresholds", "allow",
             "bad_input", "checks", "against", "memory", "engine", "incremental", "outputs"}


def default_settings(check: type[Check]) -> CheckSettings:
    from types import MappingProxyType

    from .checks import CheckSettings

    return CheckSettings(check.enabled, check.severity, MappingProxyType({k: p.default for k, p in check.params.items()}))


def _checks(c: "_Checker", value: Any) -> dict[str, CheckSettings]:
    """rules.yaml `checks:`: one mapping per check (enabled, severity, its own parameters)."""
    from types import MappingProxyType

    from .checks import SEVERITIES, CheckSettings, all_checks

    registry = {check.name: check for check in all_checks()}
    raw = c.mapping("checks", value, set(registry))
    out: dict[str, CheckSettings] = {}
    for name, check in registry.items():
        section = c.mapping(f"checks.{name}", raw.get(name), {"enabled", "severity", *check.params})
        enabled = section.get("enabled", check.enabled)
        if not isinstance(enabled, bool):
            raise c.fail(f"checks.{name}.enabled", "true or false", enabled)
        severity = c.choice(f"checks.{name}.severity", section.get("severity", check.severity), SEVERITIES)
        params: dict[str, Any] = {}
        for pname, param in check.params.items():
            v = section.get(pname, param.default)
            if not param.valid(v):
                raise c.fail(f"checks.{name}.{pname}", param.expected(), v)
            params[pname] = v
        out[name] = CheckSettings(enabled, severity, MappingProxyType(params))
    return out


def _against(c: "_Checker", value: Any, base: Path) -> tuple[Path, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise c.fail(f"against[{k}]", "a path to another dataset root (a string)", item)
        path = (base / Path(item).expanduser()).resolve()
        if not path.is_dir():
            raise c.fail(f"against[{k}]", "an existing folder", str(path))
        out.append(path)
    return tuple(out)


def _calibration(c: "_Checker", value: Any, threshold_auto: bool) -> CalibrationRules:
    cal = c.mapping("calibration", value, {"chance_pairs", "ceiling", "sample_pairs", "seed"})
    if cal and not threshold_auto:
        raise c.fail("calibration", "no calibration block unless threshold is auto (it would have no effect)",
                     _Text("a calibration block with a numeric threshold"))
    d = CalibrationRules()
    chance = cal.get("chance_pairs", d.chance_pairs)
    if isinstance(chance, bool) or not isinstance(chance, (int, float)) or not (0 < float(chance) < math.inf):
        raise c.fail("calibration.chance_pairs", "a number > 0 (expected chance pairs over the whole dataset)", chance)
    ceiling = cal.get("ceiling", "auto")
    ceiling = None if ceiling == "auto" else c.threshold("calibration.ceiling", ceiling)
    sample = cal.get("sample_pairs", d.sample_pairs)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 10_000:
        raise c.fail("calibration.sample_pairs", "a whole number >= 10000", sample)
    seed = cal.get("seed", d.seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise c.fail("calibration.seed", "a whole number >= 0", seed)
    return CalibrationRules(float(chance), ceiling, sample, seed)


def _recall_target(c: _Checker, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise c.fail("index.recall_target", "a number in (0, 1]", value)
    return float(value)


def parse_rules(data: Any, file: Path | None = None) -> Rules:
    """Validate an already-parsed YAML document; relative paths resolve against the file's folder."""
    from .backends import index_types  # `index.type`: auto, or a registered backend's (numpy: not at import)

    c = _Checker(file)
    data = c.mapping("", data, _TOP_KEYS)
    base = file.parent if file is not None else Path.cwd()

    dataset = data.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, str) or not dataset.strip():
            raise c.fail("dataset", "a path to the dataset root (a string)", dataset)
        dataset = (base / Path(dataset).expanduser()).resolve()
        if not dataset.is_dir():
            raise c.fail("dataset", "an existing folder", str(dataset))

    emb = c.mapping("embeddings", data.get("embeddings"), {"key", "centre", "cache", "workers"})
    key = emb.get("key", "auto")
    if not isinstance(key, str) or not key:
        raise c.fail("embeddings.key", "'auto' or the name of the vector array in npKnown.npz", key)
    vector_key = None if key == "auto" else key

    centre = emb.get("centre", False)
    if not isinstance(centre, bool):
        raise c.fail("embeddings.centre", "true or false", centre)
    cache = emb.get("cache", "auto")
    if not isinstance(cache, str) or not cache.strip():
        raise c.fail("embeddings.cache", "'auto' or a folder path for the embedding cache", cache)
    cache_dir = None if cache == "auto" else (base / Path(cache).expanduser()).resolve()
    embed_workers = c.optional_int("embeddings.workers", emb.get("workers"), 1)
    embedder = data.get("embedder", "dlib")
    if not isinstance(embedder, str) or not (embedder == "dlib" or _is_callable_spec(embedder)):
        raise c.fail("embedder", "'dlib' or 'package.module:callable'", embedder)

    threshold_raw = data.get("threshold", "auto")
    threshold_auto = threshold_raw == "auto"
    threshold_from = f"{file}" if "threshold" in data and file is not None else "built-in default"
    calibration = _calibration(c, data.get("calibration"), threshold_auto)
    checks = _checks(c, data.get("checks"))
    against = _against(c, data.get("against"), base)
    threshold = DEFAULT_THRESHOLD if threshold_auto else c.threshold("threshold", threshold_raw)

    ix = c.mapping("index", data.get("index"),
                   {"type", "nlist", "nprobe", "flat_below", "gpu", "recall_target", "scan", "certify"})
    gpu = ix.get("gpu", "auto")
    if gpu not in ("auto", True, False):
        raise c.fail("index.gpu", "auto, true or false", gpu)
    flat_below = ix.get("flat_below", IndexRules.flat_below)
    if isinstance(flat_below, bool) or not isinstance(flat_below, int) or flat_below < 0:
        raise c.fail("index.flat_below", "a whole number >= 0", flat_below)
    certify = ix.get("certify", IndexRules.certify)
    if not isinstance(certify, bool):
        raise c.fail("index.certify", "true or false", certify)
    index = IndexRules(
        type=c.choice("index.type", ix.get("type", "auto"), ("auto", *index_types())),
        nlist=c.optional_int("index.nlist", ix.get("nlist"), 1),
        nprobe=c.optional_int("index.nprobe", ix.get("nprobe"), 1),
        flat_below=flat_below,
        gpu=None if gpu == "auto" else gpu,
        recall_target=_recall_target(c, ix.get("recall_target", IndexRules.recall_target)),
        scan=c.choice("index.scan", ix.get("scan", IndexRules.scan), SCAN_KINDS),
        certify=certify,
    )

    overrides_raw = data.get("identity_thresholds") or {}
    if not isinstance(overrides_raw, dict):
        raise c.fail("identity_thresholds", "a mapping of identity folder name to threshold", overrides_raw)
    overrides = {
        str(name): c.threshold(f"identity_thresholds.{name}", value) for name, value in overrides_raw.items()
    }

    allow_raw = data.get("allow") or []
    if not isinstance(allow_raw, list):
        raise c.fail("allow", "a list of {identities: [A, B], reason: ...}", allow_raw)
    allow = []
    for i, entry in enumerate(allow_raw):
        key_i = f"allow[{i}]"
        entry = c.mapping(key_i, entry, {"identities", "reason"})
        names = entry.get("identities")
        if (
            not isinstance(names, list)
            or len(names) != 2
            or not all(isinstance(n, str) and n for n in names)
            or names[0] == names[1]
        ):
            raise c.fail(f"{key_i}.identities", "a list of two different identity folder names", names)
        reason = entry.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise c.fail(f"{key_i}.reason", "a non-empty reason (why these are different people)", reason)
        allow.append(AllowedPair(frozenset(names), reason.strip()))

    bad_input = c.choice("bad_input", data.get("bad_input", "fail"), ("fail", "warn"))
    # the same setting twice: top-level `bad_input` (historic) and `checks.bad_input`; the check's
    # section wins when it says something, else it mirrors the top-level key
    section = (data.get("checks") or {}).get("bad_input") or {}
    if "bad_input" in checks:
        from dataclasses import replace as _replace

        if "severity" in section or "enabled" in section:
            s_ = checks["bad_input"]
            bad_input = "info" if not s_.enabled else s_.severity
        else:
            checks["bad_input"] = _replace(checks["bad_input"], severity=bad_input)
    memory = data.get("memory", "auto")
    if memory != "auto":
        from .memory import parse_size

        try:
            memory = parse_size(memory)
        except ValueError as exc:
            raise c.fail("memory", f"'auto' or {exc}", memory) from None
    engine = _engine(c, data.get("engine", "local"))
    return Rules(
        memory=None if memory == "auto" else memory,
        engine=engine,
        incremental=_incremental(c, data.get("incremental")),
        outputs=_outputs(c, data.get("outputs")),
        source=file,
        dataset=dataset,
        vector_key=vector_key,
        threshold=threshold,
        index=index,
        identity_thresholds=overrides,
        allow=tuple(allow),
        bad_input=bad_input,
        embedder=embedder,
        threshold_auto=threshold_auto,
        threshold_from=threshold_from,
        calibration=calibration,
        checks=checks,
        against=against,
        centre=centre,
        cache_dir=cache_dir,
        embed_workers=embed_workers,
    )


def _outputs(c: _Checker, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise c.fail("outputs", "a list of optional output names, such as [face01_pairs]", value)
    for k, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise c.fail(f"outputs[{k}]", "an optional output name (a string), such as face01_pairs", item)
    return tuple(dict.fromkeys(value))


def _incremental(c: _Checker, value: Any) -> IncrementalRules:
    spec = c.mapping("incremental", value, {"enabled", "max_changed", "margin", "max_imbalance_growth",
                                            "max_nprobe_growth"})
    d = IncrementalRules()
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise c.fail("incremental.enabled", "true or false", enabled)
    raw = spec.get("max_changed", "auto")
    count = share = None
    expected = "'auto', a whole number of faces >= 0, or a share of the table such as 5%"
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            share = float(raw.strip()[:-1]) / 100
        except ValueError:
            raise c.fail("incremental.max_changed", expected, raw) from None
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise c.fail("incremental.max_changed", expected, raw)
    elif raw != "auto":
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise c.fail("incremental.max_changed", expected, raw)
        count = raw
    margin = spec.get("margin", "auto")
    if margin != "auto" and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                             or not 0.0 <= float(margin) <= 0.2):
        raise c.fail("incremental.margin", "'auto' or a number in [0, 0.2]", margin)
    growth = {}
    for name in ("max_imbalance_growth", "max_nprobe_growth"):
        v = spec.get(name, getattr(d, name))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1.0 <= float(v) < math.inf:
            raise c.fail(f"incremental.{name}", "a number >= 1", v)
        growth[name] = float(v)
    return IncrementalRules(enabled=enabled, max_changed=count, max_changed_share=share,
                            margin=None if margin == "auto" else float(margin), **growth)


def _engine(c: _Checker, value: Any) -> EngineRules:
    if isinstance(value, str):
        value = {"type": value}
    spec = c.mapping("engine", value, {"type", "address", "ranges"})
    kind = c.choice("engine.type", spec.get("type", "local"), ENGINES)
    address = spec.get("address")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise c.fail("engine.address", "'auto' or a Ray address such as ray://head:10001", address)
    if address is not None and kind != "ray":
        raise c.fail("engine.address", "only with engine.type: ray", address)
    ranges = c.optional_int("engine.ranges", spec.get("ranges"), 1)
    return EngineRules(kind, address, ranges)


def _is_callable_spec(text: str) -> bool:
    module, sep, attr = text.partition(":")
    parts = module.split(".") + attr.split(".")
    return bool(sep) and all(p.isidentifier() for p in parts)


# -- reading the YAML: bounded -------------------------------------------------------------
# A rules file is a few kilobytes; these bounds are far above any real one and keep a hostile or
# mistaken one (an alias bomb, /dev/zero, a generated 100 MB file) to a clear error in bounded
# time and memory.
MAX_RULES_BYTES = 1 << 20  # bytes read of a rules file
MAX_NODES = 100_000  # YAML values (scalars, lists, mappings) after expanding every alias
MAX_DEPTH = 64  # lists and mappings nested in one another


class _Refused(yaml.YAMLError):  # type: ignore[misc]  # YAMLError is Any to mypy (yaml untyped)
    """A rules file beyond the bounds above, or with a key twice: `line` (1-based), expected, found."""

    def __init__(self, line: int, expected: str, found: str):
        super().__init__(found)
        self.line, self.expected, self.found = line, expected, found


try:
    from yaml.cyaml import CParser as _CParser  # type: ignore[import-untyped]  # libyaml's parser, when PyYAML was built with it
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _CParser = None


_PARSER = (_CParser,) if _CParser is not None else (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


# misc: yaml's classes are Any to mypy, and the parser bases are chosen at run time
class _RulesLoader(yaml.composer.Composer, *_PARSER, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):  # type: ignore[misc]
    """yaml.safe_load's loader, composing with a count: every alias counts the values it stands for,
    so that an alias bomb ("billion laughs": 345 bytes that expand to billions of values) is refused
    at the alias that crosses MAX_NODES, and nesting past MAX_DEPTH is refused before Python's
    recursion limit. libyaml parses when it is there (5x faster); composing is PyYAML's own."""

    def __init__(self, stream: str):
        if _CParser is not None:
            _CParser.__init__(self, stream)
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._nodes = 0  # values so far, aliases expanded
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(anchored node) -> the values it expands to

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:  # index: passed through
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _Refused(event.start_mark.line + 1, "aliases to values defined before them",
                               f"alias *{_cut(event.anchor, 60)} inside the value it names (a recursive alias)")
            self._count(size, event, f"alias *{_cut(event.anchor, 60)}")
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(event.start_mark.line + 1, f"lists and mappings nested at most {MAX_DEPTH} deep",
                           f"a value nested {self._depth} deep")
        before = self._nodes
        self._count(1, event, "a value")
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, size: int, event: yaml.Event, what: str) -> None:
        self._nodes += size
        if self._nodes > MAX_NODES:
            raise _Refused(event.start_mark.line + 1,
                           f"at most {MAX_NODES} values in all, aliases (*name) counted at the size of what they name",
                           f"{what}, which makes {self._nodes} values (an alias bomb?)")

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            value: int = super().construct_yaml_int(node)
            return value
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise _Refused(node.start_mark.line + 1, "a number",
                           f"a whole number of {len(node.value)} digits") from None


_RulesLoader.add_constructor("tag:yaml.org,2002:int", _RulesLoader.construct_yaml_int)
_MERGE = "tag:yaml.org,2002:merge"


def _duplicate_keys(loader: _RulesLoader, root: yaml.Node) -> tuple[str, int, int] | None:
    """(dotted key, first line, second line) of the first key given twice in one mapping, at any
    level (PyYAML keeps the last silently). Keys merged in with `<<: *alias` may be overridden."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE:
                    try:
                        key = loader.construct_object(key_node)
                        hash(key)
                    except (yaml.YAMLError, TypeError, ValueError):
                        continue  # construct_document says what is wrong with it
                    line = key_node.start_mark.line + 1
                    where = f"{path}.{key}" if path else str(key)
                    if key in first:
                        return where, first[key], line
                    first[key] = line
                    stack.append((value_node, where))
                else:
                    stack.append((value_node, path))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{k}]") for k, item in enumerate(node.value))
    return None


def _read_yaml(path: Path, text: str) -> Any:
    loader = _RulesLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dup = _duplicate_keys(loader, node)
        if dup is not None:
            key, a, b = dup
            raise RulesError(path, key, "each key once (YAML would keep only the last)",
                             _Text(f"the key on line {a} and again on line {b}"))
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_rules(path: str | Path | None) -> Rules:
    """Read and validate a rules file; `None` or a missing default gives the built-in defaults."""
    if path is None:
        return parse_rules({})  # exactly what an empty rules file means: the documented defaults
    path = Path(path)
    try:
        with open(path, "rb") as fh:  # at most MAX_RULES_BYTES + 1: /dev/zero or a FIFO ends too
            raw = fh.read(MAX_RULES_BYTES + 1)
        if len(raw) > MAX_RULES_BYTES:
            raise RulesError(path, "(file)", f"a rules file of at most {MAX_RULES_BYTES // 1024} KiB",
                             _Text(f"a file of more than {MAX_RULES_BYTES // 1024} KiB"))
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise RulesError(path, "(file)", "an existing rules file", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(path, "(file)", "a readable UTF-8 YAML file", str(exc)) from None
    try:
        data = _read_yaml(path, text)
    except _Refused as exc:
        raise RulesError(path, f"line {exc.line}", exc.expected, _Text(exc.found)) from None
    except RecursionError:  # not reached within MAX_DEPTH; a last guard
        raise RulesError(path, "(file)", f"lists and mappings nested at most {MAX_DEPTH} deep",
                         _Text("deeper nesting")) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise RulesError(path, where, "valid YAML", getattr(exc, "problem", None) or str(exc)) from None
    return parse_rules(data, path.resolve())
