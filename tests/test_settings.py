from dataclasses import dataclass, field
from typing import Literal

import pytest

from dms.settings import SettingsError, describe, load_settings, settings_version


@dataclass(frozen=True)
class Inner:
    limit_s: float = field(default=3.0, metadata={"doc": "a limit"})
    mode: Literal["a", "b"] = "a"

    def validate(self) -> None:
        if self.limit_s <= 0:
            raise ValueError("limit_s must be > 0")


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    count: int = 2
    pair: tuple[float, float] = (1.0, 2.0)
    name: str | None = None


def test_defaults_and_overrides():
    s = load_settings(Outer, {"inner": {"limit_s": 5}, "pair": [3, 4]})
    assert s.inner.limit_s == 5.0 and s.pair == (3.0, 4.0) and s.count == 2
    assert load_settings(Outer, None) == Outer()


@pytest.mark.parametrize(
    "table, message",
    [
        ({"inner": {"limit": 1}}, "engine.inner.limit: unknown setting"),
        ({"count": 1.5}, "engine.count: expected an integer"),
        ({"count": True}, "engine.count: expected an integer"),
        ({"inner": {"mode": "c"}}, "engine.inner.mode: 'c' is not one of"),
        ({"inner": {"limit_s": -1}}, "limit_s must be > 0"),
        ({"pair": [1]}, "engine.pair: expected 2 values"),
        ({"inner": 3}, "engine.inner: expected a table"),
    ],
)
def test_errors_name_the_key(table, message):
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        load_settings(Outer, table, "engine")


def test_version_changes_with_values_and_describe_lists_docs():
    assert settings_version(Outer()) == settings_version(Outer())
    assert settings_version(Outer()) != settings_version(Outer(count=3))
    rows = describe(Inner)
    assert rows[0] == ("limit_s", "float", 3.0, "a limit")
