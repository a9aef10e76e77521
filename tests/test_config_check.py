"""The config-check mechanism shared by ``pretrain.settings`` and ``transfer.recipes`` (:mod:`ibot.config_check`)."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest

from ibot.config_check import (
    EXAMPLES,
    KIND_NAMES,
    KindMismatch,
    accepts,
    check_kind,
    describe_kinds,
    did_you_mean,
    element_kind,
    flatten,
    is_finite_number,
    key_kinds,
    kind_name,
    kind_of,
    lookup,
    nearest_keys,
)


@pytest.mark.parametrize("value, kind", [
    (None, "none"), (True, "bool"), (False, "bool"), (0, "int"), (1.5, "float"), ("a", "str"), ([1], "list"),
    ((1, 2), "list"), ({}, "dict"), (OrderedDict(a=1), "dict"), (b"x", "bytes"), ({1}, "set"),
])
def test_kind_of(value: object, kind: str) -> None:
    assert kind_of(value) == kind


def test_kind_names_and_descriptions_take_each_callers_wording() -> None:
    assert kind_name("int") == "an integer" and kind_name("bool") == "true or false"
    assert kind_name("bytes") == "bytes"  # an unnamed kind is shown as it is
    assert describe_kinds(("int", "none")) == "an integer or None"
    assert describe_kinds(("float", "float_list")) == "a number or a list of numbers"
    names = {**KIND_NAMES, "int": "an int", "bool": "a bool (True / False)"}
    assert describe_kinds(["bool", "int", "str"], names) == "a bool (True / False) or an int or a string"
    assert describe_kinds(()) == ""


def test_key_kinds_declared_else_the_defaults_and_a_none_default_takes_anything() -> None:
    declared = {"amp": ("bool", "none")}
    assert key_kinds("amp", False, declared) == ("bool", "none")
    assert key_kinds("lr", 0.1, declared) == ("float",)
    assert key_kinds("scales", (0.1, 1.0), declared) == ("list",)
    assert key_kinds("root", None, declared) == ()


def test_element_kind() -> None:
    declared = {"features": "dict"}
    assert element_kind("features", "auto", declared) == "dict"
    assert element_kind("ks", [10, 20], declared) == "int"
    assert element_kind("betas", [0.9, 1], declared) == "float"  # ints and floats together: numbers
    assert element_kind("mixed", [1, "a"], declared) is None
    assert element_kind("empty", [], declared) is None
    assert element_kind("scalar", 3, declared) is None


@pytest.mark.parametrize("value, kinds, ok", [
    (1, ("float",), True), (1.5, ("float",), True), (True, ("float",), False), (True, ("int",), False),
    (1.5, ("int",), False), ("a", ("str", "none"), True), (None, ("str", "none"), True), (3, ("str", "none"), False),
    ([0.1, 2], ("float_list",), True), ((0.1, 0.2), ("float_list",), True), ([], ("float_list",), False),
    ([0.1, "a"], ("float_list",), False), ([True], ("float_list",), False), (0.3, ("float", "float_list"), True),
    ([1, 2], ("int_list",), True), ([1.5], ("int_list",), False), ([], ("list",), True),
    ({"a": 1}, ("dict",), True), (object(), (), True),  # no kinds: anything
])
def test_accepts(value: object, kinds: tuple[str, ...], ok: bool) -> None:
    assert accepts(value, kinds) is ok
    assert accepts(value, list(kinds)) is ok  # any iterable of kinds


def test_check_kind_promotes_and_converts() -> None:
    assert check_kind("lr", 1, ("float",)) == 1.0 and isinstance(check_kind("lr", 1, ("float",)), float)
    assert isinstance(check_kind("n", 1, ("float", "int")), int)  # a key that takes an int keeps it
    assert check_kind("betas", (1, 0.5), ("list",), "float") == [1.0, 0.5]
    assert check_kind("xs", ("a", 2), ("list",)) == ["a", 2]  # no element kind: any elements
    assert check_kind("ks", [], ("list",), "int") == []
    assert check_kind("nested", [[1], (2,)], ("list",), "list") == [[1], [2]]
    assert check_kind("free", {"any": object}, ()) == {"any": object}
    assert check_kind("amp", None, ("bool", "none")) is None
    assert check_kind("mode", "a", ("str",)) == "a"


def test_check_kind_names_the_key_or_the_list_element_refused() -> None:
    with pytest.raises(KindMismatch) as info:
        check_kind("epochs", 2.5, ("int",))
    e = info.value
    assert (e.key, e.value, e.kinds, e.element) == ("epochs", 2.5, ("int",), False)
    assert str(e) == "config key 'epochs' is 2.5 (a number); expected an integer"
    assert isinstance(e, ValueError)
    with pytest.raises(KindMismatch) as info:
        check_kind("ks", [1, 2.5], ("list",), "int")
    e = info.value
    assert (e.key, e.value, e.kinds, e.element) == ("ks[1]", 2.5, ("int",), True)
    with pytest.raises(KindMismatch, match=r"'ks' is 5 \(an integer\); expected a list"):
        check_kind("ks", 5, ("list",), "int")
    with pytest.raises(KindMismatch, match="expected true or false"):
        check_kind("flag", 1, ("bool",))


def test_examples_have_their_kind() -> None:
    assert all(kind_of(v) == k for k, v in EXAMPLES.items())


def test_is_finite_number() -> None:
    assert is_finite_number(1) and is_finite_number(-2.5)
    assert not any(is_finite_number(v) for v in (math.inf, -math.inf, math.nan, True, "1", None, [1]))


def test_flatten() -> None:
    cfg = {"optim": {"lr": 0.1, "betas": (0.9, 0.99)}, "model": {"vit": {"depth": 2}, "overrides": {}}, "seed": 0}
    assert flatten(cfg) == {"optim.lr": 0.1, "optim.betas": (0.9, 0.99), "model.vit.depth": 2,
                            "model.overrides": {}, "seed": 0}  # an empty section is a value
    assert flatten({"x": {"a": 1}}, "top.") == {"top.x.a": 1}
    assert flatten({"x": 1}, "top.") == {"top.x": 1}
    assert flatten({}) == {}


def test_lookup() -> None:
    cfg = {"optim": {"lr": 0.1, "none": None}, "ks": [1, 2], "name": "abc"}
    assert lookup(cfg, "optim.lr") == (True, 0.1)
    assert lookup(cfg, "optim.none") == (True, None)  # found, and None
    assert lookup(cfg, "optim") == (True, {"lr": 0.1, "none": None})
    for missing in ("optim.lrr", "optimizer.lr", "ks.0", "name.upper", "optim.lr.x", ""):
        assert lookup(cfg, missing) == (False, None)


KNOWN = ["optim.lr", "optim.lr_batch_ref", "optim.eps", "sched.min_lr", "aug.mixup", "aug.mixup_prob", "seed"]


def test_nearest_keys_whole_key_first_then_last_component() -> None:
    assert nearest_keys("optim.lrr", KNOWN) == ["optim.lr", "optim.lr_batch_ref", "optim.eps"]
    assert nearest_keys("optim.lrr", KNOWN, n=1) == ["optim.lr"]
    assert nearest_keys("lr", KNOWN) == ["optim.lr"]  # only the last component is like it
    assert nearest_keys("optimizer.lr", KNOWN, n=1) == ["optim.lr"]
    assert nearest_keys("aug.mixupp", KNOWN, n=2) == ["aug.mixup", "aug.mixup_prob"]
    assert nearest_keys("zzz", KNOWN) == [] and nearest_keys("lr", []) == []
    assert nearest_keys("sed", iter(KNOWN)) == ["seed"]  # any iterable of known keys


def test_did_you_mean() -> None:
    assert did_you_mean([]) == ""
    assert did_you_mean(["optim.lr"]) == "; did you mean 'optim.lr'?"
    assert did_you_mean(iter(["a.b", "c"])) == "; did you mean 'a.b' or 'c'?"


def test_both_validators_use_the_shared_mechanism() -> None:
    """One mechanism, one place: the callers keep their wording, not copies of the checks."""
    import pretrain.settings as settings
    import transfer.recipes as recipes

    for module in (settings, recipes):
        for name in ("_kind", "_accepts", "_describe", "_flatten", "_flat_keys", "_lookup", "_element_kind",
                     "nearest_key", "_EXAMPLES", "_finite"):
            assert not hasattr(module, name), f"{module.__name__}.{name} duplicates ibot.config_check"
    assert recipes.suggest_keys is nearest_keys
    assert recipes.check_value("ks", (1, 2), [10]) == [1, 2]
    with pytest.raises(recipes.ConfigValueError, match=r"config key 'ks\[1\]' must be an integer, got 'a' "
                                                       r"\(a string\); e\.g\. --set ks\[1\]=0"):
        recipes.check_value("ks", [1, "a"], [10])
    with pytest.raises(settings.PretrainConfigError, match=r"'train.epochs' is True \(a bool \(True / False\)\); "
                                                           r"expected an int, e\.g\. train\.epochs="):
        cfg = settings.base_config()
        cfg["train"]["epochs"], cfg["data"]["root"] = True, "/data"
        settings.validate_config(cfg)
