"""Checks shared by the config validators (``pretrain.settings``, ``transfer.recipes``).

A config is a nested mapping of plain values. Each value has a *kind*, one of
``'bool' | 'int' | 'float' | 'str' | 'none' | 'list' | 'dict'``, or the type name of anything else (:func:`kind_of`).
A key accepts one or more kinds: those declared for it, else its default's (:func:`key_kinds`). ``'float'`` also
accepts an int, and ``'<kind>_list'`` (e.g. ``'float_list'``) accepts a non-empty list of that kind
(:func:`accepts`). :func:`check_kind` does the same check for a value about to be stored: an int for a float
becomes a float, a tuple a list, and the elements of a list are checked against the list's element kind.

Keys are dotted (``optim.lr``): :func:`flatten` lists a nested config by dotted key, :func:`lookup` finds one,
and :func:`nearest_keys` / :func:`did_you_mean` suggest the known keys nearest to an unknown one.

The human names of kinds (:data:`KIND_NAMES`) can be replaced per caller (the ``names`` argument): a Python config
file says ``True / False`` where a command line says ``true or false``.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["KIND_NAMES", "EXAMPLES", "KindMismatch", "kind_of", "kind_name", "describe_kinds", "key_kinds",
           "element_kind", "accepts", "check_kind", "is_finite_number", "flatten", "lookup", "nearest_keys",
           "did_you_mean"]

#: How a message names each kind ("must be an integer", "expected a number or None").
KIND_NAMES: dict[str, str] = {
    "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "none": "None",
    "list": "a list", "dict": "a dict", "float_list": "a list of numbers",
}

#: A value of each kind (an example for a message about a list element, which has no default of its own).
EXAMPLES: dict[str, Any] = {"int": 0, "float": 0.0, "bool": False, "str": "", "dict": {}, "list": []}

_LIST_SUFFIX = "_list"


class KindMismatch(ValueError):
    """A value that is none of the kinds its key accepts.

    Attributes:
        key: the dotted key; ``key[i]`` for element ``i`` of a list.
        value: the value refused.
        kinds: the kinds accepted (for a list element: the list's element kind).
        element: whether ``value`` is an element of the key's list (then ``key`` ends in ``[i]``).
    """

    def __init__(self, key: str, value: Any, kinds: tuple[str, ...], element: bool = False) -> None:
        super().__init__(f"config key '{key}' is {value!r} ({kind_name(kind_of(value))}); "
                         f"expected {describe_kinds(kinds)}")
        self.key, self.value, self.kinds, self.element = key, value, kinds, element


def kind_of(value: Any) -> str:
    """``'bool' | 'int' | 'float' | 'str' | 'none' | 'list' | 'dict'`` (tuples are lists, mappings dicts), or the
    type name of anything else. A bool is ``'bool'``, not ``'int'``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    return type(value).__name__


def kind_name(kind: str, names: Mapping[str, str] = KIND_NAMES) -> str:
    """The human name of ``kind`` (``'int'`` -> ``'an integer'``); an unnamed kind is shown as it is."""
    return names.get(kind, kind)


def describe_kinds(kinds: Iterable[str], names: Mapping[str, str] = KIND_NAMES) -> str:
    """``('int', 'none')`` -> ``'an integer or None'``."""
    return " or ".join(kind_name(k, names) for k in kinds)


def key_kinds(key: str, default: Any, declared: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The kinds config ``key`` accepts: ``declared[key]``, else its default's kind. A ``None`` default that is not
    declared says nothing about the value: ``()``, which accepts anything."""
    if key in declared:
        return tuple(declared[key])
    kind = kind_of(default)
    return () if kind == "none" else (kind,)


def element_kind(key: str, default: Any, declared: Mapping[str, str]) -> str | None:
    """The kind of each element of list-valued ``key``: ``declared[key]``, else the kind shared by the elements of
    its default (ints and floats together: ``'float'``); None when that does not tell."""
    if key in declared:
        return declared[key]
    if isinstance(default, (list, tuple)) and default:
        kinds = {kind_of(v) for v in default}
        if kinds == {"int", "float"}:
            return "float"
        return kinds.pop() if len(kinds) == 1 else None
    return None


def _is(kind: str, value: Any) -> bool:
    got = kind_of(value)
    if kind == "float":
        return got in ("float", "int")
    if kind.endswith(_LIST_SUFFIX):
        elem = kind[: -len(_LIST_SUFFIX)]
        return got == "list" and len(value) > 0 and all(_is(elem, v) for v in value)
    return got == kind


def accepts(value: Any, kinds: Iterable[str]) -> bool:
    """Whether ``value`` is one of ``kinds`` (no kinds: anything). ``'float'`` takes an int too; ``'<kind>_list'``
    takes a non-empty list (or tuple) whose elements are all ``<kind>``."""
    kinds = tuple(kinds)
    return not kinds or any(_is(k, value) for k in kinds)


def check_kind(key: str, value: Any, kinds: Iterable[str], element: str | None = None) -> Any:
    """``value`` as config ``key`` stores it, checked against the ``kinds`` the key accepts (none: anything, as is).

    An int for a key that takes a float but not an int becomes a float; a list (or tuple) for a key that takes a list
    becomes a list, each element checked (and converted) the same way against ``element`` when given.

    Raises:
        KindMismatch: ``value`` (or one element of it, then named ``key[i]``) is of no kind accepted.
    """
    kinds = tuple(kinds)
    if not kinds:
        return value
    kind = kind_of(value)
    if kind == "int" and "float" in kinds and "int" not in kinds:
        return float(value)
    if kind == "list" and "list" in kinds:
        if element is None:
            return list(value)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(check_kind(f"{key}[{i}]", v, (element,)))
            except KindMismatch as e:
                raise KindMismatch(e.key, e.value, e.kinds, element=True) from None
        return out
    if accepts(value, kinds):
        return value
    raise KindMismatch(key, value, kinds)


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither infinite nor NaN."""
    return kind_of(value) in ("int", "float") and math.isfinite(value)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of a nested config: mappings are descended into, except an empty one, which is a value
    (as are lists). ``prefix`` is put before every key (``'model.'``)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def lookup(cfg: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``(found, value)`` of dotted ``key`` in a nested config; ``(False, None)`` when a part is missing or a value
    stands where a section would."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def nearest_keys(key: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` known dotted keys nearest to ``key`` (``difflib``), best first: those like the whole key, then
    those whose last component is like ``key``'s (``lr`` -> ``optim.lr``)."""
    known = list(known)
    out = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    for name in difflib.get_close_matches(leaf, sorted({k.rsplit(".", 1)[-1] for k in known}), n=n, cutoff=0.75):
        out += [k for k in known if k.rsplit(".", 1)[-1] == name and k not in out]
    return out[:n]


def did_you_mean(keys: Iterable[str]) -> str:
    """The hint that follows an unknown key: ``"; did you mean 'optim.lr' or 'optim.eps'?"``, or ``""``."""
    keys = list(keys)
    return f"; did you mean {' or '.join(repr(k) for k in keys)}?" if keys else ""
