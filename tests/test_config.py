"""Bad configuration fails at set-up, naming the variable."""

from __future__ import annotations

import pytest

from streamguard import ConfigurationError, Options


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STREAMGUARD_STALL_TIMEOUT", "-1"),
        ("STREAMGUARD_DEADLINE", "soon"),
        ("STREAMGUARD_IDLE_TIMEOUT", "inf"),
        ("STREAMGUARD_MAX_BUFFERED", "0"),
        ("STREAMGUARD_MAX_INFLIGHT", "two"),
        ("STREAMGUARD_INCLUDE_USAGE", "maybe"),
    ],
)
def test_bad_environment_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable) as info:
        Options.resolve(environ={variable: value})
    assert info.value.variable == variable
    assert value not in str(info.value) or value in {"0", "-1"}


def test_arguments_win_over_environment() -> None:
    opts = Options.resolve({"stall_timeout": 2.5}, environ={"STREAMGUARD_STALL_TIMEOUT": "9"})
    assert opts.stall_timeout == 2.5
    assert Options.resolve(environ={"STREAMGUARD_STALL_TIMEOUT": "9"}).stall_timeout == 9.0


def test_bad_argument_and_unknown_option() -> None:
    with pytest.raises(ConfigurationError, match="deadline"):
        Options.resolve({"deadline": -3}, environ={})
    with pytest.raises(ConfigurationError, match="stal_timeout"):
        Options.resolve({"stal_timeout": 3}, environ={})
