"""The spin window: spin while every spinner of a group has a core, else park at once."""

from __future__ import annotations

import dataclasses
import os

import pytest

from torchtroupe import _settings
from torchtroupe.transport import waiting


def settings_with(**changes: object) -> _settings.Settings:
    return dataclasses.replace(_settings.load_settings(), **changes)


@pytest.mark.parametrize(
    ("cores", "world_size", "expected_s"),
    [
        (2, 1, waiting.AUTOMATIC_SPIN_US * 1e-6),  # caller + 1 rank on 2 cores
        (2, 2, 0.0),  # 3 spinners on 2 cores: park at once
        (16, 8, waiting.AUTOMATIC_SPIN_US * 1e-6),
        (8, 8, 0.0),
    ],
)
def test_groups_spin_only_while_every_spinner_has_a_core(
    monkeypatch: pytest.MonkeyPatch, cores: int, world_size: int, expected_s: float
) -> None:
    monkeypatch.setattr(waiting, "SETTINGS", settings_with(spin_us=None))
    monkeypatch.setattr(waiting, "usable_cores", lambda: cores)

    assert waiting.spin_window_s(world_size) == pytest.approx(expected_s)


def test_an_explicit_spin_setting_wins_over_the_core_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waiting, "SETTINGS", settings_with(spin_us=7.0))
    monkeypatch.setattr(waiting, "usable_cores", lambda: 1)

    assert waiting.spin_window_s(64) == pytest.approx(7e-6)


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("0", 0.0), ("12.5", 12.5)])
def test_spin_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: float | None
) -> None:
    monkeypatch.setenv("TORCHTROUPE_SPIN_US", raw)

    assert _settings.load_settings().spin_us == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [("", True), ("1", True), ("0", False), ("off", False)]
)
def test_native_flag_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("TORCHTROUPE_NATIVE", raw)

    assert _settings.load_settings().native is expected


def test_a_malformed_native_flag_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHTROUPE_NATIVE", "maybe")

    with pytest.raises(ValueError, match="TORCHTROUPE_NATIVE='maybe' is not a flag"):
        _settings.load_settings()


def test_usable_cores_counts_this_process_affinity() -> None:
    assert 1 <= waiting.usable_cores() <= (os.cpu_count() or 1)


def test_the_compiled_ring_core_is_built_and_used() -> None:
    # The suite runs on the compiled core wherever it can be built (the Makefile's
    # install builds it); TORCHTROUPE_NATIVE=0 asks for the Python core on purpose.
    from torchtroupe.transport.core import IMPLEMENTATION

    in_use = IMPLEMENTATION
    assert in_use == ("native" if _settings.SETTINGS.native else "python"), (
        "the C ring core did not build: see pip's output"
    )
