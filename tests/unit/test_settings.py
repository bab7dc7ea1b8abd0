"""ember's settings: read from the environment in one place, checked, immutable."""

import dataclasses

import pytest

from ember import _settings
from ember.exceptions import InvalidOptionError


def test_defaults_when_the_environment_says_nothing():
    settings = _settings.load({})
    assert settings == _settings.Settings()
    assert settings.log_commit_wait_s == 60.0 and settings.log_sync_commit is True


def test_values_are_read_and_the_object_is_immutable():
    settings = _settings.load({"EMBER_LOG_COMMIT_WAIT_S": "2.5", "EMBER_LOG_LAZY_S": "0",
                               "EMBER_LOG_SYNC_COMMIT": "Off"})
    assert (settings.log_commit_wait_s, settings.log_lazy_s, settings.log_sync_commit) == (2.5, 0.0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.log_lazy_s = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name,text,words", [
    ("EMBER_LOG_COMMIT_WAIT_S", "soon", "not a number of seconds"),
    ("EMBER_LOG_COMMIT_WAIT_S", "-1", "zero or more"),
    ("EMBER_LOG_LAZY_S", "nan", "zero or more"),
    ("EMBER_LOG_SYNC_COMMIT", "maybe", "neither on nor off"),
])
def test_a_bad_value_names_the_variable_and_the_fix(name, text, words):
    with pytest.raises(InvalidOptionError, match=words) as raised:
        _settings.load({name: text})
    assert name in str(raised.value)


@pytest.mark.parametrize("switch,expected", [("on", "on"), ("off", "off")])
def test_the_writer_commits_as_the_sync_commit_switch_says(postgres, monkeypatch, switch, expected):
    from ember.lineage._gcs_log import COLUMNS
    from ember.lineage._log_writer import LogWriter

    monkeypatch.setenv("EMBER_LOG_SYNC_COMMIT", switch)
    writer = LogWriter(postgres.conninfo, COLUMNS)
    try:
        assert writer._connection().execute("SHOW synchronous_commit").fetchone() == (expected,)
    finally:
        writer.close()
