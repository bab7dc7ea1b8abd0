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


def test_init_checks_every_variable_before_starting_anything(monkeypatch):
    import ember

    monkeypatch.setenv("EMBER_PUT_COPY_MAX_BYTES", "lots")
    with pytest.raises(InvalidOptionError, match="EMBER_PUT_COPY_MAX_BYTES='lots' is not a whole number"):
        ember.init(num_cpus=1)
    assert not ember.is_initialized()


def _package_sources():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    for folder in ("api", "lineage", "store", "scheduler", "chaos"):
        yield from sorted((root / folder).rglob("*.py"))


def test_every_ember_variable_is_a_settings_field_and_read_only_there():
    import ast
    import re

    known = {_settings.variable(field.name) for field in dataclasses.fields(_settings.Settings)}
    for path in _package_sources():
        text = path.read_text()
        for name in set(re.findall(r"\bEMBER_[A-Z][A-Z_]*[A-Z]\b", text)):
            assert name in known, f"{path.name} names {name}, which is no field of ember._settings.Settings"
        if path.name == "_settings.py":
            continue
        for node in ast.walk(ast.parse(text)):
            # os.environ.get(...), os.getenv(...), os.environ[...] with an EMBER_ literal: read outside _settings
            literal = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = ast.unparse(node.func)
                if func in ("os.environ.get", "os.getenv", "environ.get"):
                    literal = node.args[0].value
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                    and isinstance(node.slice, ast.Constant) and isinstance(node.ctx, ast.Load):
                literal = node.slice.value
            assert not (isinstance(literal, str) and literal.startswith("EMBER_")), \
                f"{path.name} reads {literal} itself; read it through ember._settings.load()"
