"""The edge agent's configuration file and everything it refers to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_agent.agent_config import load_agent_config
from edge_agent.errors import ConfigError

from conftest import CONFIGS

AGENT = CONFIGS / "edge-elm-1st.toml"


def test_shipped_agent_config_loads_with_its_files():
    config = load_agent_config(AGENT)
    assert config.intersection.id == "elm-1st"
    assert config.register_map.device.id == "elm-1st-cabinet"
    assert set(config.trusted_keys) == {"central"}
    assert config.trusted_keys["central"].startswith(b"-----BEGIN PUBLIC KEY-----")
    assert [minute for minute, _ in config.time_of_day] == [0, 420, 1140]
    assert config.spool_path == Path("/tmp/tsc-edge-elm-1st.sqlite")


@pytest.mark.parametrize(("minute", "cycle"), [(0, 60.0), (419, 60.0), (420, 90.0),
                                               (1139, 90.0), (1140, 60.0), (1439, 60.0)])
def test_fallback_plan_follows_the_time_of_day(minute, cycle):
    assert load_agent_config(AGENT).fallback_plan(minute).cycle == cycle


def copy_configs(tmp_path: Path) -> Path:
    folder = tmp_path / "configs"
    shutil.copytree(CONFIGS, folder)
    return folder / "edge-elm-1st.toml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "message"), [
    ('start = "07:00"', 'start = "7am"', "time_of_day.start: must be HH:MM"),
    ('start = "07:00"', 'start = "00:00"', "increasing start order"),
    ('heartbeat_timeout_s = 30 ', 'heartbeat_timeout_s = 0 ', "heartbeat_timeout_s"),
    ('port = 1883', 'port = 0', "mqtt.port"),
    ('keepalive_s = 30', 'keepalive_s = 1', "mqtt.keepalive_s"),
    ('good_heartbeats_to_resume = 3', 'good_heartbeats_to_resume = 0', "good_heartbeats"),
    ('measurement_interval_s = 60', 'measurement_interval_s = 0.5', "measurement_interval_s"),
    ('host = "127.0.0.1"', 'host = ""', "mqtt.host"),
    ('trusted_keys = { central = "keys/example-central.pub" }', 'trusted_keys = {}',
     "name at least one key"),
    ('central = "keys/example-central.pub"', 'central = "keys/missing.pub"',
     "cannot read public key 'central'"),
    ('intersection = "elm-1st"', 'intersection = "elm-9th"', "no intersection 'elm-9th'"),
    ('site = "downtown"', 'site = "downtown"\ncolour = "red"', "unknown field `colour`"),
])
def test_bad_agent_files_are_refused_naming_what_is_wrong(tmp_path, old, new, message):
    agent = copy_configs(tmp_path)
    edit(agent, old, new)
    with pytest.raises(ConfigError, match=message):
        load_agent_config(agent)


def test_every_time_of_day_plan_must_pass_the_guard(tmp_path):
    agent = copy_configs(tmp_path)
    edit(agent.parent / "plans" / "elm-1st-peak.toml", "yellow = 3.0", "yellow = 2.5")
    with pytest.raises(ConfigError, match=r"elm-1st-peak.toml fails the guard: \[yellow-floor\]"):
        load_agent_config(agent)


def test_the_agent_needs_a_local_plan(tmp_path):
    agent = copy_configs(tmp_path)
    text = agent.read_text()
    text = text[:text.index("[[time_of_day]]")]
    agent.write_text(text.replace("measurement_interval_s = 60",
                                  "measurement_interval_s = 60\ntime_of_day = []"))
    with pytest.raises(ConfigError, match="at least one local plan"):
        load_agent_config(agent)


def test_absolute_paths_are_kept(tmp_path):
    agent = copy_configs(tmp_path)
    edit(agent, 'site_config = "nema-4phase.toml"',
         f'site_config = "{agent.parent / "nema-4phase.toml"}"')
    assert load_agent_config(agent).intersection.id == "elm-1st"
