"""Typed, validated config records: from_dict, Record, hp, describe_fields, to_dict."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, dataclass

import pytest

from mmtune.config import Record, describe_fields, from_dict, hp, to_dict
from mmtune.errors import ConfigError


@dataclass(frozen=True)
class Params(Record):
    alpha: float = hp(0.5, low=0.0, high=1.0, doc="strength alpha")
    beta: float = hp(1.0, low=0.0, low_open=True, doc="positive beta")
    gamma: float = hp(0.5, low=0.0, high=1.0, high_open=True, doc="gamma in [0, 1)")
    steps: int = hp(3, low=1, high=10, doc="number of steps")
    mode: str = hp("fast", choices=("fast", "slow", "exact"), doc="the mode")
    limit: int | None = hp(None, low=0, doc="optional limit")
    names: tuple[str, ...] = hp(("a", "b"), doc="some names")
    mapping: dict[str, str] = hp(default_factory=dict, doc="name overrides")
    flag: bool = hp(False, doc="a switch")
    free: float = hp(0.0, doc="an unbounded float")


def problems_of(data, path: str = ""):
    with pytest.raises(ConfigError) as err:
        from_dict(Params, data, path=path)
    return err.value.problems


def only_problem(data, path: str = ""):
    problems = problems_of(data, path)
    assert len(problems) == 1, problems
    return problems[0]


# ----------------------------------------------------------------------------- defaults and coercion


def test_defaults() -> None:
    for p in (from_dict(Params, {}), from_dict(Params, None), Params()):
        assert p.alpha == 0.5 and p.beta == 1.0 and p.gamma == 0.5
        assert p.steps == 3 and p.mode == "fast" and p.limit is None
        assert p.names == ("a", "b") and p.mapping == {} and p.flag is False and p.free == 0.0


def test_default_factory_is_not_shared() -> None:
    a, b = Params(), Params()
    assert a.mapping == {} and a.mapping is not b.mapping


def test_int_widens_to_float() -> None:
    p = from_dict(Params, {"alpha": 1, "beta": 2, "free": -7})
    assert p.alpha == 1.0 and type(p.alpha) is float
    assert p.beta == 2.0 and type(p.beta) is float
    assert p.free == -7.0 and type(p.free) is float
    # also when built directly
    assert type(Params(alpha=0).alpha) is float


def test_float_is_not_narrowed_to_int() -> None:
    pr = only_problem({"steps": 2.0})
    assert pr.path == "steps"
    assert "int" in pr.message


@pytest.mark.parametrize("key", ["alpha", "steps", "free", "limit"])
@pytest.mark.parametrize("value", [True, False])
def test_bool_rejected_for_numbers(key: str, value: bool) -> None:
    pr = only_problem({key: value})
    assert pr.path == key
    assert "bool" in pr.message


def test_str_rejected_for_float_and_int() -> None:
    pr = only_problem({"alpha": "0.3"})
    assert pr.path == "alpha" and "float" in pr.message and "'0.3'" in pr.message
    pr = only_problem({"steps": "3"})
    assert pr.path == "steps" and "int" in pr.message


def test_optional_int() -> None:
    assert from_dict(Params, {"limit": 5}).limit == 5
    assert from_dict(Params, {"limit": None}).limit is None
    assert from_dict(Params, {"limit": 0}).limit == 0
    pr = only_problem({"limit": -1})
    assert pr.path == "limit" and "[0, inf)" in pr.message
    pr = only_problem({"limit": 1.5})
    assert pr.path == "limit" and "int or null" in pr.message


def test_list_to_tuple_coercion() -> None:
    p = from_dict(Params, {"names": ["x", "y", "z"]})
    assert p.names == ("x", "y", "z") and isinstance(p.names, tuple)
    assert from_dict(Params, {"names": []}).names == ()
    assert isinstance(Params(names=["q"]).names, tuple)  # direct construction coerces too
    # a bare string is not a list of strings, nor is a list of ints
    assert only_problem({"names": "xy"}).path == "names"
    assert only_problem({"names": ["x", 1]}).path == "names"


def test_mapping_field() -> None:
    assert from_dict(Params, {"mapping": {"video": "cnn"}}).mapping == {"video": "cnn"}
    assert only_problem({"mapping": ["video", "cnn"]}).path == "mapping"


def test_mapping_value_types_are_checked() -> None:
    assert only_problem({"mapping": {"video": 3}}).path == "mapping"


def test_bool_field_rejects_int() -> None:
    assert from_dict(Params, {"flag": True}).flag is True
    assert only_problem({"flag": 1}).path == "flag"


def test_record_is_frozen_and_replace_validates() -> None:
    p = Params()
    with pytest.raises(FrozenInstanceError):
        p.alpha = 0.1  # type: ignore[misc]
    assert p.replace(alpha=1).alpha == 1.0
    with pytest.raises(ConfigError):
        p.replace(alpha=2.0)


# ----------------------------------------------------------------------------- problems


def test_unknown_key_did_you_mean() -> None:
    pr = only_problem({"alpah": 0.3})
    assert pr.path == "alpah"
    assert "Did you mean 'alpha'?" in pr.message
    assert "unknown key" in pr.message
    # no suggestion for a name that is nothing like any field, but the valid keys are listed
    pr = only_problem({"zzzzzzzz": 1})
    assert "Did you mean" not in pr.message
    assert "alpha" in pr.message and "steps" in pr.message


def test_all_problems_reported_at_once_with_path() -> None:
    problems = problems_of({"alpah": 0.3, "steps": 11, "beta": "big"}, path="params")
    assert len(problems) == 3, problems
    by_path = {p.path: p.message for p in problems}
    assert set(by_path) == {"params.alpah", "params.steps", "params.beta"}
    assert "Did you mean 'alpha'?" in by_path["params.alpah"]
    assert "[1, 10]" in by_path["params.steps"] and "11" in by_path["params.steps"]
    assert "float" in by_path["params.beta"]


def test_all_problems_reported_without_unknown_keys() -> None:
    problems = problems_of({"alpha": -1.0, "steps": 0, "mode": "quick"}, path="params")
    assert {p.path for p in problems} == {"params.alpha", "params.steps", "params.mode"}


def test_str_of_error_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(Params, {"alpah": 0.3, "steps": 11}, path="params")
    text = str(err.value)
    assert "params.alpah" in text and "params.steps" in text
    assert len(text.splitlines()) == 2


def test_choices_error_lists_options() -> None:
    pr = only_problem({"mode": "slwo"})
    assert pr.path == "mode"
    for opt in ("'fast'", "'slow'", "'exact'"):
        assert opt in pr.message
    assert "'slwo'" in pr.message
    assert "Did you mean 'slow'?" in pr.message
    for ok in ("fast", "slow", "exact"):
        assert from_dict(Params, {"mode": ok}).mode == ok


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("alpha", 0.0, True),  # closed low
        ("alpha", 1.0, True),  # closed high
        ("alpha", -1e-12, False),
        ("alpha", 1.0 + 1e-12, False),
        ("beta", 0.0, False),  # open low
        ("beta", 0, False),
        ("beta", 1e-12, True),
        ("gamma", 0.0, True),
        ("gamma", 1.0, False),  # open high
        ("gamma", 1.0 - 1e-12, True),
        ("steps", 1, True),
        ("steps", 10, True),
        ("steps", 0, False),
        ("steps", 11, False),
    ],
)
def test_bounds_at_the_boundary(key: str, value: float, ok: bool) -> None:
    if ok:
        assert getattr(from_dict(Params, {key: value}), key) == value
    else:
        pr = only_problem({key: value})
        assert pr.path == key and "must lie in" in pr.message


def test_range_text_shows_open_and_closed_ends() -> None:
    assert "(0, inf)" in only_problem({"beta": 0.0}).message
    assert "[0, 1)" in only_problem({"gamma": 1.0}).message
    assert "[0, 1]" in only_problem({"alpha": 2.0}).message


@pytest.mark.parametrize("key", ["alpha", "beta", "free"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(key: str, value: float) -> None:
    pr = only_problem({key: value})
    assert pr.path == key
    assert "finite" in pr.message


def test_non_mapping_input_rejected() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(Params, [("alpha", 0.1)], path="params")
    assert err.value.problems[0].path == "params"


def test_internal_fields_are_not_user_settable() -> None:
    @dataclass(frozen=True)
    class WithInternal(Record):
        internal_fields = ("secret",)
        public: int = hp(1, low=0)
        secret: int = hp(0)

    assert from_dict(WithInternal, {"public": 2}).public == 2
    with pytest.raises(ConfigError) as err:
        from_dict(WithInternal, {"secret": 5})
    assert err.value.problems[0].path == "secret"
    assert [r["name"] for r in describe_fields(WithInternal)] == ["public"]


# ----------------------------------------------------------------------------- describe / to_dict


def test_describe_fields_rows() -> None:
    rows = {r["name"]: r for r in describe_fields(Params)}
    assert list(rows) == ["alpha", "beta", "gamma", "steps", "mode", "limit", "names", "mapping", "flag", "free"]
    for r in rows.values():
        assert set(r) >= {"name", "type", "default", "valid", "doc"}
        assert all(isinstance(v, str) for v in r.values())
    assert rows["alpha"]["default"] == "0.5"
    assert rows["alpha"]["valid"] == "[0, 1]"
    assert rows["alpha"]["doc"] == "strength alpha"
    assert rows["beta"]["valid"] == "(0, inf)"
    assert rows["gamma"]["valid"] == "[0, 1)"
    assert rows["steps"]["valid"] == "[1, 10]"
    assert rows["mode"]["valid"] == "fast | slow | exact"
    assert rows["mode"]["default"] == "'fast'"
    assert rows["limit"]["default"] == "None"
    assert rows["limit"]["valid"] == "[0, inf)"
    assert rows["names"]["default"] == "('a', 'b')"
    assert rows["mapping"]["default"] == "{}"
    assert rows["flag"]["valid"] == "bool"
    assert rows["free"]["valid"] == "float"


def test_to_dict_plain_data_and_round_trip() -> None:
    p = from_dict(Params, {"alpha": 0.25, "names": ["x"], "mapping": {"video": "cnn"}, "limit": 4, "mode": "exact"})
    d = to_dict(p)
    assert d == {
        "alpha": 0.25, "beta": 1.0, "gamma": 0.5, "steps": 3, "mode": "exact", "limit": 4,
        "names": ["x"], "mapping": {"video": "cnn"}, "flag": False, "free": 0.0,
    }
    assert isinstance(d["names"], list)
    assert from_dict(Params, d) == p
    assert from_dict(Params, to_dict(Params())) == Params()


# ----------------------------------------------------------------------------- numbers no config may hold


@dataclass(frozen=True)
class Ratios(Record):
    per_modality: dict[str, float] = hp(default_factory=dict, doc="a float per modality")
    steps: tuple[int, ...] = hp((1,), doc="some integers")


@pytest.mark.parametrize(
    ("cls", "data", "path", "message"),
    [
        (Params, {"free": 10**400}, "free", "must fit in a 64-bit integer (|x| < 2**63), got 10000000000000000000000000000… (401 characters)."),
        (Params, {"limit": 2**63}, "limit", "must fit in a 64-bit integer (|x| < 2**63), got 9223372036854775808."),
        (Params, {"free": -math.inf}, "free", "must be a finite number, got -inf."),
        (Ratios, {"per_modality": {"audio": math.nan}}, "per_modality.audio", "must be a finite number, got nan."),
        (Ratios, {"steps": [1, 2**64]}, "steps[1]", "must fit in a 64-bit integer (|x| < 2**63), got 18446744073709551616."),
    ],
)
def test_nan_infinities_and_integers_beyond_64_bits_are_refused(cls, data, path, message) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data)
    assert [(p.path, p.message) for p in err.value.problems] == [(path, message)]


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        ({"alpha": "1e-3"}, "YAML reads '1e-3' as text; write 1.0e-3 for the number."),
        ({"alpha": "5E2"}, "YAML reads '5E2' as text; write 5.0e+2 for the number."),
        ({"alpha": "0.5"}, "YAML reads '0.5' as text; write 0.5 for the number."),
        ({"steps": "1e1"}, "YAML reads '1e1' as text; write 10 for the number."),
    ],
)
def test_text_that_reads_as_a_number_gets_the_spelling_yaml_reads_as_one(data, hint) -> None:
    pr = only_problem(data)
    assert pr.message.endswith(hint), pr.message
    assert "write" not in only_problem({"alpha": "fast"}).message and "write" not in only_problem({"steps": "1.5"}).message


def test_a_long_value_is_cut_in_the_message() -> None:
    pr = only_problem({"mode": "x" * 5000})
    assert len(pr.message) < 250 and "… (5,002 characters)" in pr.message
