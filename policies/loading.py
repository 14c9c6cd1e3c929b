"""Loading policies from YAML, with errors that name the file, the field and the line.

``load_policy`` accepts a path to a ``.yaml`` file, the name of a bundled policy
(``default``, ``strict``, ``observe-only``) or an already built :class:`Policy`.
Every problem (YAML syntax, duplicate key, schema) raises one
:class:`~fastrm_common.errors.PolicyError` whose message has one line per problem::

    policies/mine.yaml:7: rules[1].action: unknown action 'abstian'; expected one of: allow, flag, abstain, escalate
    policies/mine.yaml:9: rules[1].when.treshold: unknown key 'treshold'; expected one of: margin, max_token_entropy, ...

The line comes from the YAML node graph (``yaml.compose``): the schema error's
location (``("rules", 1, "action")``) is walked down the nodes to the value's
start mark; an unknown key points at the key itself, a missing field at the
mapping that lacks it.

Policy files are trusted configuration (a handler names code to run), but the
loader still refuses documents that would make *loading* expensive: files over
:data:`MAX_POLICY_BYTES`, YAML nested deeper than :data:`MAX_POLICY_DEPTH`,
and documents whose aliases expand to more than :data:`MAX_POLICY_NODES` nodes
(a "billion laughs" file) or refer to themselves. Each is a ``PolicyError``.

Example::

    >>> from policies import load_policy
    >>> load_policy("default").id
    'default'
"""

from __future__ import annotations

import os
import types
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from fastrm_common.errors import PolicyError
from fastrm_common.records import open_regular

from .schema import Policy

__all__ = ["list_bundled_policies", "load_policy", "parse_policy"]

MAX_POLICY_BYTES = 1 << 20  # 1 MiB: a policy is a page of YAML, not a data file
MAX_POLICY_DEPTH = 64  # real policies nest about 6 levels
MAX_POLICY_NODES = 50_000  # YAML nodes after alias expansion; real policies have a few hundred

PolicySource = Union[str, "os.PathLike[str]", Policy]

_Loc = tuple[str | int, ...]


def list_bundled_policies() -> list[str]:
    """Names of the policies shipped in ``policies/bundled`` (sorted), e.g. ``["default", "observe-only", "strict"]``."""
    folder = resources.files("policies") / "bundled"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_policy(source: PolicySource) -> Policy:
    """Load a policy from a YAML file, a bundled name, or pass a :class:`Policy` through.

    ``source`` is treated as a file when it is a ``Path``, contains a path
    separator or ends in ``.yaml``/``.yml``. A bare name is a bundled policy
    (see :func:`list_bundled_policies`) whenever one has that name, even if a
    file of that name exists in the working directory (write ``./strict`` for
    the file); any other bare name that names an existing file is read as a
    file. Relative escalation ``queue`` paths are resolved against the file's
    directory.

    Raises :class:`PolicyError` (file missing or unreadable, unknown bundled
    name, YAML or schema error) with the file, field and line in the message.
    """
    if isinstance(source, Policy):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise PolicyError(
            f"expected a policy file path, a bundled policy name or a Policy, got {type(source).__name__}"
        )
    text_source = os.fspath(source)
    bundled = list_bundled_policies()
    looks_like_file = (
        not isinstance(source, str)
        or os.sep in text_source
        or "/" in text_source
        or text_source.endswith((".yaml", ".yml"))
        or (text_source not in bundled and os.path.isfile(text_source))
    )
    if not looks_like_file:
        if text_source not in bundled:
            raise PolicyError(
                f"unknown bundled policy {text_source!r}; expected one of: {', '.join(bundled)} "
                "(or a path to a .yaml file)"
            )
        res = resources.files("policies") / "bundled" / f"{text_source}.yaml"
        return parse_policy(res.read_text(encoding="utf-8"), source=f"<bundled:{text_source}>")
    path = Path(text_source)
    try:
        with open_regular(path) as fh:  # a FIFO or a device is refused, not read forever
            raw = fh.read(MAX_POLICY_BYTES + 1)
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"policy file {text_source} is larger than {MAX_POLICY_BYTES} bytes")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {text_source}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(f"cannot read policy file {text_source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {text_source}: {exc.strerror or exc}") from None
    return parse_policy(text, source=text_source, base_dir=path.resolve().parent)


def parse_policy(text: str, *, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None) -> Policy:
    """Parse and validate a policy from YAML text.

    ``source`` names the text in error messages; ``base_dir`` (default: the
    working directory at escalation time) anchors relative escalation queues.

    >>> parse_policy("id: p\\nversion: 1\\ndefault: {action: allow}").version
    '1'
    """
    if not isinstance(text, str):
        raise PolicyError(f"{source}: expected the policy as text, got {type(text).__name__}")
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: policy text is larger than {MAX_POLICY_BYTES} characters")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            raise PolicyError(f"{source}:1: policy file is empty")
        _check_size(root, source)  # before anything walks or constructs the expanded document
        data = yaml.safe_load(text)
    except PolicyError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise PolicyError(f"{source}:{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: invalid YAML: {exc}") from None
    except RecursionError:
        raise PolicyError(f"{source}: invalid YAML: nested more than {MAX_POLICY_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise PolicyError(f"{source}: invalid YAML value: {exc}") from None
    problems = _duplicate_keys(root)
    if problems:
        raise PolicyError(_render(source, problems))
    if not isinstance(data, dict):
        raise PolicyError(f"{source}:{root.start_mark.line + 1}: (top level): expected a mapping, got {_kind(data)}")
    if base_dir is not None:
        data = _anchor_queues(data, Path(base_dir))
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = [_explain(err, root) for err in exc.errors()]
        raise PolicyError(_render(source, problems)) from None


# ---------------------------------------------------------------- error rendering

_EXPECTED = {
    "string_type": "a string",
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "finite_number": "a finite number",
}


def _render(source: str, problems: list[tuple[int, str, str]]) -> str:
    problems = sorted(problems, key=lambda p: p[0])
    return "\n".join(f"{source}:{line}: {path}: {msg}" for line, path, msg in problems)


def _explain(err: Any, root: yaml.Node) -> tuple[int, str, str]:
    """One pydantic error -> (line, field path, message)."""
    loc: _Loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "duplicate_rule" and "index" in ctx:
        loc = loc + (ctx["index"], "name")
    if kind == "extra_forbidden":
        choices = _field_names(loc[:-1])
        msg = f"unknown key {loc[-1]!r}"
        if choices:
            msg += f"; expected one of: {', '.join(choices)}"
        return _line(root, loc, key=True), _path(loc), msg
    if kind == "missing":
        return _line(root, loc), _path(loc), "missing required field"
    if kind == "literal_error":
        choices = _literal_choices(loc)
        what = next((p for p in reversed(loc) if isinstance(p, str)), "value")
        msg = (
            f"unknown {what} {value!r}"
            if isinstance(value, str)
            else f"expected one of the names below, got {_kind(value)}"
        )
        if choices:
            msg += f"; expected one of: {', '.join(choices)}"
        return _line(root, loc), _path(loc), msg
    if kind in _EXPECTED:
        return _line(root, loc), _path(loc), f"expected {_EXPECTED[kind]}, got {_kind(value)}"
    if kind == "version_float":
        # YAML read `1.10` as the number 1.1: quote what the file says, not the number
        node = _node(root, loc)
        raw = node.value if isinstance(node, yaml.ScalarNode) else f"{value:g}"
        return _line(root, loc), _path(loc), f'expected a string or an integer, got the number {raw}; quote it: "{raw}"'
    if kind in ("too_short", "string_too_short"):
        return _line(root, loc), _path(loc), "must not be empty"
    return _line(root, loc), _path(loc), str(err["msg"]).removeprefix("Value error, ")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _path(loc: _Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line(root: yaml.Node, loc: _Loc, *, key: bool = False) -> int:
    """1-based line of the node at ``loc`` (of its key when ``key``), else of the deepest node found."""
    return _node(root, loc, key=key).start_mark.line + 1


def _node(root: yaml.Node, loc: _Loc, *, key: bool = False) -> yaml.Node:
    """The node at ``loc`` (its key when ``key``), else the deepest node found on the way."""
    node = root
    for i, part in enumerate(loc):
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == part:
                    child = k if (key and i == len(loc) - 1) else v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root: yaml.Node, source: str) -> None:
    """Reject documents nested too deeply, containing themselves, or expanding past MAX_POLICY_NODES.

    An alias makes the composed graph share one node in several places; the size of the
    document once expanded is computed with one memo entry per distinct node, so a file whose
    aliases expand to 10^9 nodes is measured (and rejected) in time linear in its length.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        line = node.start_mark.line + 1
        if key in open_nodes:
            raise PolicyError(f"{source}:{line}: invalid YAML: an alias refers to a node that contains it")
        if depth > MAX_POLICY_DEPTH:
            raise PolicyError(f"{source}:{line}: invalid YAML: nested more than {MAX_POLICY_DEPTH} levels deep")
        open_nodes.add(key)
        total = 1
        for child in _children(node):
            total += size(child, depth + 1)
            if total > MAX_POLICY_NODES:
                how = "through its aliases " if len(sizes) < MAX_POLICY_NODES else ""
                raise PolicyError(
                    f"{source}:{line}: invalid YAML: the document expands {how}to more than "
                    f"{MAX_POLICY_NODES} nodes"
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _duplicate_keys(root: yaml.Node) -> list[tuple[int, str, str]]:
    """YAML silently keeps the last of two equal keys; a policy treats that as an error."""
    problems: list[tuple[int, str, str]] = []
    seen_nodes: set[int] = set()  # an aliased node is checked once, where it is first met

    def walk(node: yaml.Node, loc: _Loc) -> None:
        if id(node) in seen_nodes:
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                if name in seen and name != "<<":
                    problems.append((k.start_mark.line + 1, _path(loc + (name,)), f"duplicate key {name!r}"))
                seen.add(name)
                walk(v, loc + (name,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, loc + (i,))

    walk(root, ())
    return problems


def _annotation_at(loc: _Loc) -> Any:
    """The type annotation the schema expects at ``loc`` (Optional and list unwrapped), or None."""
    tp: Any = Policy
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if get_origin(tp) is not list:
                return None
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    return _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):  # Optional[X] and X | None
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _field_names(loc: _Loc) -> list[str]:
    tp = _annotation_at(loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return sorted(tp.model_fields)
    return []


def _literal_choices(loc: _Loc) -> list[str]:
    tp = _annotation_at(loc)
    return [str(a) for a in get_args(tp)] if tp is not None else []


def _anchor_queues(data: dict, base_dir: Path) -> dict:
    """Copy of ``data`` with relative escalation queue paths made absolute under ``base_dir``."""

    def fix(action: Any) -> Any:
        if isinstance(action, dict) and isinstance(action.get("escalation"), dict):
            esc = action["escalation"]
            queue = esc.get("queue")
            if isinstance(queue, str) and queue.strip():
                q = Path(queue)
                if not q.is_absolute():
                    q = base_dir / q
                return {**action, "escalation": {**esc, "queue": str(q)}}
        return action

    out = dict(data)
    if isinstance(out.get("rules"), list):
        out["rules"] = [fix(r) for r in out["rules"]]
    if "default" in out:
        out["default"] = fix(out["default"])
    return out
