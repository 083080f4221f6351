"""Settings: defaults, file and environment precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from gateway.config import load_settings

STUDENT = {"base_url": "http://lorax:8080/v1"}


def test_defaults_are_usable() -> None:
    """With nothing configured the gateway has working embedded defaults."""
    s = load_settings(env={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert str(s.spool.dir) == ".protege/spool" and s.store == "file://.protege/store"
    assert s.api_keys == ()


def test_environment_overrides_file(tmp_path: Path) -> None:
    """PROTEGE_* variables override the YAML file, which overrides the defaults."""
    f = tmp_path / "c.yaml"
    f.write_text("teacher:\n  base_url: http://file:1/v1\n  read_timeout_s: 9\nstore: s3://bkt/p\n")
    env = {
        "PROTEGE_TEACHER_BASE_URL": "http://env:2/v1/",
        "PROTEGE_TEACHER_API_KEY": "sk-env",
        "PROTEGE_API_KEYS": "a, b,,",
        "PROTEGE_SPOOL_DIR": "/var/spool/p",
    }
    s = load_settings(f, env=env)
    assert s.teacher.base_url == "http://env:2/v1" and s.teacher.read_timeout_s == 9
    assert s.teacher.api_key is not None and s.teacher.api_key.get_secret_value() == "sk-env"
    assert [k.get_secret_value() for k in s.api_keys] == ["a", "b"]
    assert str(s.spool.dir) == "/var/spool/p" and s.store == "s3://bkt/p"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"routes": [{"alias": "a", "task": "ok"}, {"alias": "b", "task": "no spaces"}]},
            "config: routes[1].task must match pattern",
        ),
        (
            {"routes": [{"alias": "a", "task": "x"}, {"alias": "a", "task": "y"}]},
            "config: routes alias 'a' is defined twice",
        ),
        ({"spool": {"on_full": "explode"}}, "config: spool.on_full must be 'drop' or 'reject'"),
        (
            {"teacher": {"base_url": "localhost:8000"}},
            "config: teacher.base_url must be an http(s) URL",
        ),
        ({"store": "gs://bucket"}, "config: store must be file://DIR or s3://bucket"),
        ({"teacher": {"timeout": 3}}, "config: teacher.timeout is not a known setting"),
        (
            {"redaction": {"rules": [{"name": "r", "pattern": "("}]}},
            "config: redaction.rules[0].pattern '(' is not a valid RE2 pattern",
        ),
        (
            {
                "routes": [{"alias": "a", "task": "t", "rollout": {"mode": "student"}}],
                "student": STUDENT,
            },
            "config: routes[0].rollout.adapter is required when mode is 'student'",
        ),
        (
            {
                "routes": [
                    {"alias": "a", "task": "t", "rollout": {"adapter": "t/v1", "mode": "canary"}}
                ]
            },
            "config: student.base_url is required: routes[0] (a) has mode 'canary'",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "rollout": {"adapter": "v1"}}]},
            "config: routes[0].rollout.adapter must match pattern",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "rollout": {"mode": "blue"}}]},
            "config: routes[0].rollout.mode must",
        ),
        (
            {
                "routes": [
                    {"alias": "a", "task": "t", "rollout": {"mode": "canary", "percent": 140}}
                ]
            },
            "config: routes[0].rollout.percent must be less than or equal to 100, got 140",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "rollout": {"checks": {"must_match": ["("]}}}]},
            "config: routes[0].rollout.checks.must_match '(' is not a valid RE2 pattern",
        ),
        (
            {
                "routes": [
                    {"alias": "a", "task": "t", "rollout": {}},
                    {"alias": "b", "task": "t", "rollout": {}},
                ]
            },
            "config: routes[1].rollout is set for task 't' by routes[0] already",
        ),
        (
            {"student": {"base_url": "lorax:8080"}},
            "config: student.base_url must be an http(s) URL",
        ),
        ({"student": {"read_timeout_s": 0}}, "config: student.read_timeout_s must be greater than"),
        (
            {"routes": [{"alias": "a", "task": "t", "student_decoding": {"temperature": 3}}]},
            "config: routes[0].student_decoding.temperature must be less than or equal to 2",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "student_decoding": {"top_p": 0}}]},
            "config: routes[0].student_decoding.top_p must be greater than 0",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "student_decoding": {"max_tokens": 0}}]},
            "config: routes[0].student_decoding.max_tokens must be greater than or equal to 1",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "student_decoding": {"max_temperature": -1}}]},
            "config: routes[0].student_decoding.max_temperature must be greater than or equal",
        ),
        (
            {"routes": [{"alias": "a", "task": "t", "student_decoding": {"temp": 0}}]},
            "config: routes[0].student_decoding.temp is not a known setting",
        ),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, object], message: str) -> None:
    """Each bad value fails with a message that starts with the key's path."""
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, **overrides)
    assert str(info.value).startswith(message), str(info.value)


def test_student_settings_from_environment() -> None:
    """PROTEGE_STUDENT_BASE_URL and PROTEGE_STUDENT_API_KEY set the student upstream."""
    env = {"PROTEGE_STUDENT_BASE_URL": "http://lorax:8080/v1/", "PROTEGE_STUDENT_API_KEY": "sk-s"}
    rollout = {"adapter": "tickets/v3", "mode": "student"}
    route = {"alias": "tickets", "task": "tickets", "rollout": rollout}
    s = load_settings(env=env, routes=[route])
    assert s.student.base_url == "http://lorax:8080/v1"
    assert s.student.api_key is not None and s.student.api_key.get_secret_value() == "sk-s"
    assert (s.routes[0].rollout.mode, s.routes[0].rollout.adapter) == ("student", "tickets/v3")
    assert load_settings(env={}).student.base_url is None


def test_secrets_are_not_echoed() -> None:
    """A bad secret value is not printed back in the error."""
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, teacher={"api_key": ["sk-live-should-not-print"]})
    assert "sk-live" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A missing file or invalid YAML is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, env={})


def test_student_decoding_per_route() -> None:
    """Each route has its own student_decoding; unset, the published policy applies as is."""
    routes = [
        {"alias": "a", "task": "t"},
        {"alias": "b", "task": "t", "student_decoding": {"published": False, "temperature": 0}},
    ]
    a, b = load_settings(env={}, routes=routes).routes
    assert a.student_decoding.published and a.student_decoding.output_schema
    assert (a.student_decoding.temperature, a.student_decoding.max_tokens) == (None, None)
    assert (b.student_decoding.published, b.student_decoding.temperature) == (False, 0.0)
