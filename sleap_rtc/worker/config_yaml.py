"""Safe parsing of a training config sent as YAML text (``TrainJobSpec.config_content``).

``yaml.safe_load`` semantics, stricter: a size cap, no tags at all (``!foo``,
``!!python/...``, even ``!!str``), aliases only within a tiny budget (no
billion-laughs), bounded nesting, exactly one document, no duplicate keys (the
trainer's loader refuses them later), and a mapping at the top level with
string keys. Every refusal is a :class:`ConfigYamlError` naming the 1-based
line, which becomes a ``VIOLATION_CODE_BAD_CONFIG`` field violation.

>>> parse_config_yaml("model_config:\\n  backbone: unet\\n")
{'model_config': {'backbone': 'unet'}}
>>> try:
...     parse_config_yaml("a: 1\\nb: !!python/object:os.system x\\n")
... except ConfigYamlError as exc:
...     print(exc.line, exc.rule_id)
2 config.yaml.tag
"""

from __future__ import annotations

from typing import Any

import yaml

from sleap_rtc_proto.limits import MAX_CONFIG_BYTES
from sleap_rtc_proto.v1 import job_pb2

#: Aliases (``*name``) allowed in one config; YAML configs rarely need any.
DEFAULT_MAX_ALIASES = 16
#: Deepest nesting of mappings and sequences allowed.
DEFAULT_MAX_DEPTH = 64

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Rule ids of the checks here (worker rules, reported in FieldViolation.rule_id).
RULES: dict[str, str] = {
    "config.yaml.size": "The config is at most the worker's max_config_bytes (UTF-8).",
    "config.yaml.syntax": "The config is valid YAML.",
    "config.yaml.tag": "The config uses no YAML tags (!tag, !!type).",
    "config.yaml.alias": "The config uses at most a few aliases (*name).",
    "config.yaml.depth": "The config nests mappings and lists at most 64 deep.",
    "config.yaml.documents": "The config is exactly one YAML document.",
    "config.yaml.mapping": "The config's top level is a mapping with string keys.",
    "config.yaml.duplicate_key": "No mapping repeats a key.",
}


class ConfigYamlError(ValueError):
    """A config refused by :func:`parse_config_yaml`.

    Attributes:
        message: a human sentence naming the problem (and the line).
        line: 1-based line in the text; 0 when it does not apply.
        rule_id: a key of :data:`RULES`.
    """

    def __init__(self, message: str, *, line: int = 0, rule_id: str = "config.yaml.syntax"):
        super().__init__(message)
        self.message = message
        self.line = line
        self.rule_id = rule_id

    def to_violation(
        self, *, field: str = "spec.config_content", path: str = ""
    ) -> job_pb2.FieldViolation:
        """The FieldViolation for JobRejected."""
        code = (
            job_pb2.VIOLATION_CODE_TOO_LARGE
            if self.rule_id == "config.yaml.size"
            else job_pb2.VIOLATION_CODE_BAD_CONFIG
        )
        return job_pb2.FieldViolation(
            field=field,
            rule_id=self.rule_id,
            code=code,
            message=self.message,
            path=path,
            line=self.line,
        )


def _line_of(mark: Any) -> int:
    line = getattr(mark, "line", None)
    return int(line) + 1 if isinstance(line, int) else 0


def _at(line: int) -> str:
    return f"line {line}: " if line else ""


def parse_config_yaml(
    text: str,
    *,
    max_bytes: int = MAX_CONFIG_BYTES,
    max_aliases: int = DEFAULT_MAX_ALIASES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """Parse ``text`` as one safe YAML mapping.

    Raises:
        ConfigYamlError: naming the rule and the 1-based line.
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise ConfigYamlError(
            f"config is {size} bytes, over the limit of {max_bytes} bytes",
            rule_id="config.yaml.size",
        )
    try:
        _check_events(text, max_aliases=max_aliases, max_depth=max_depth)
        node = yaml.compose(text, Loader=_Loader)
    except ConfigYamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        line = _line_of(exc.problem_mark or exc.context_mark)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigYamlError(f"{_at(line)}invalid YAML: {problem}", line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigYamlError(f"invalid YAML: {exc}") from None
    if node is None:
        raise ConfigYamlError(
            "config is empty: expected a mapping such as 'model_config: ...'",
            line=1,
            rule_id="config.yaml.mapping",
        )
    if not isinstance(node, yaml.MappingNode):
        line = _line_of(node.start_mark)
        raise ConfigYamlError(
            f"{_at(line)}the config's top level must be a mapping (key: value), "
            f"not a {'list' if isinstance(node, yaml.SequenceNode) else 'scalar'}",
            line=line,
            rule_id="config.yaml.mapping",
        )
    _check_duplicates(node)
    try:
        data = yaml.load(text, Loader=_Loader)  # safe loader; tags already refused
    except yaml.MarkedYAMLError as exc:
        line = _line_of(exc.problem_mark or exc.context_mark)
        raise ConfigYamlError(f"{_at(line)}invalid YAML: {exc.problem}", line=line) from None
    except (yaml.YAMLError, RecursionError, TypeError, ValueError) as exc:
        raise ConfigYamlError(f"invalid YAML: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):  # pragma: no cover - the node check above covers it
        raise ConfigYamlError(
            "the config's top level must be a mapping", rule_id="config.yaml.mapping"
        )
    for key_node, _ in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str) or key not in data:
            line = _line_of(key_node.start_mark)
            raise ConfigYamlError(
                f"{_at(line)}top-level keys must be plain strings",
                line=line,
                rule_id="config.yaml.mapping",
            )
    return data


def _check_events(text: str, *, max_aliases: int, max_depth: int) -> None:
    """Refuse tags, too many aliases, deep nesting and extra documents, event by event."""
    aliases = 0
    depth = 0
    documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = _line_of(event.start_mark)
        tag = getattr(event, "tag", None)
        if tag is not None:  # the parser leaves tag unset unless the text names one
            raise ConfigYamlError(
                f"{_at(line)}YAML tag {tag!r} is not allowed in a training config",
                line=line,
                rule_id="config.yaml.tag",
            )
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > max_aliases:
                raise ConfigYamlError(
                    f"{_at(line)}too many YAML aliases (more than {max_aliases}); "
                    "write the values out",
                    line=line,
                    rule_id="config.yaml.alias",
                )
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > max_depth:
                raise ConfigYamlError(
                    f"{_at(line)}the config nests deeper than {max_depth} levels",
                    line=line,
                    rule_id="config.yaml.depth",
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise ConfigYamlError(
                    f"{_at(line)}the config holds more than one YAML document",
                    line=line,
                    rule_id="config.yaml.documents",
                )


def _check_duplicates(root: yaml.Node) -> None:
    stack: list[yaml.Node] = [root]
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in keys and key_node.value != "<<":
                        line = _line_of(key_node.start_mark)
                        raise ConfigYamlError(
                            f"{_at(line)}duplicate key {key_node.value!r}",
                            line=line,
                            rule_id="config.yaml.duplicate_key",
                        )
                    keys.add(key_node.value)
                stack.append(key_node)
                stack.append(value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
