"""The agent file's tables for the runtime ([central] as the mode machine's config,
[aggregation], [detector_health]), what load_agent_config now checks for it, and the
``tsc-edge run`` command line (the agent itself is faked here; it runs for real in
test_edge_integration.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, without_actuation_coils
from edge_agent import cli
from edge_agent.actuation import ActuationParams
from edge_agent.agent_config import load_agent_config
from edge_agent.errors import ConfigError
from edge_agent.modes import ModeConfig

AGENT = CONFIGS / "edge-elm-1st.toml"


def copy_configs(tmp_path: Path, extra: str = "") -> Path:
    """The shipped configs, copied; ``extra`` lines ("[table]\nkey = value") are put at the
    top of their table."""
    folder = tmp_path / "configs"
    shutil.copytree(CONFIGS, folder)
    path = folder / "edge-elm-1st.toml"
    text = path.read_text()
    for chunk in extra.strip().split("\n\n") if extra.strip() else []:
        header, _, body = chunk.strip().partition("\n")
        assert header + "\n" in text, header
        text = text.replace(header + "\n", f"{header}\n{body}\n", 1)
    path.write_text(text)
    return path


def test_the_shipped_file_gives_every_core_config():
    config = load_agent_config(AGENT)
    assert config.modes == ModeConfig(heartbeat_timeout_s=30.0, good_heartbeats_to_resume=3,
                                      startup_grace_s=60.0)
    assert config.aggregation.interval_s == 60.0 and config.aggregation.counter_bits == 16
    assert config.health.stuck_on_s == 180.0
    assert isinstance(config.file.central, ModeConfig)  # one schema: [central] is one


def test_tables_reach_the_core(tmp_path):
    path = copy_configs(tmp_path, '\n[aggregation]\n'
                                  'counter_bits_by_detector = { "elm-1st_S_0_stop" = 32 }\n')
    path.write_text(path.read_text().replace("jam_spacing_m = 7.5 ", "jam_spacing_m = 8.0 ")
                    .replace("stuck_on_s = 180 ", "stuck_on_s = 240 "))
    path.write_text(path.read_text().replace("measurement_interval_s = 60",
                                             "measurement_interval_s = 30")
                    .replace("good_heartbeats_to_resume = 3 ", "good_heartbeats_to_resume = 2 ")
                    .replace("startup_grace_s = 60 ", "startup_grace_s = 5 "))
    config = load_agent_config(path)
    assert (config.aggregation.interval_s, config.aggregation.jam_spacing_m) == (30.0, 8.0)
    assert config.aggregation.counter_bits_by_detector == {"elm-1st_S_0_stop": 32}
    assert config.health.stuck_on_s == 240.0
    assert config.modes == ModeConfig(heartbeat_timeout_s=30.0, good_heartbeats_to_resume=2,
                                      startup_grace_s=5.0)


@pytest.mark.parametrize(("extra", "message"), [
    ("\n[aggregation]\ninterval_s = 30\n",
     r"interval is set once, as measurement_interval_s \(key aggregation.interval_s\)"),
    ('\n[aggregation]\ncounter_bits_by_detector = { "nowhere" = 32 }\n',
     "unknown detector 'nowhere'"),
    ("\n[aggregation]\ncounter_bits = 0\n", "aggregation.counter_bits"),
    ("\n[detector_health]\ncolour = 1\n", "unknown field `colour`"),
    ("\n[actuation]\npassage = 2\n", "unknown field `passage`"),
    ("\n[actuation]\nmin_queue_veh = -1\n", "actuation.min_queue_veh: must be a finite number"),
    ("\n[actuation]\nenabled = 1\n", r"Expected `bool \| null`.*actuation.enabled"),
    ("\n[actuation]\npassage_min_s = 3\n", "actuation.passage_min_s: must be <= passage_s"),
])
def test_bad_tables_are_refused(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_agent_config(copy_configs(tmp_path, extra))


def test_local_actuation_is_on_where_the_map_has_coils(tmp_path):
    config = load_agent_config(AGENT)
    assert config.actuation_enabled and config.actuation_params == ActuationParams()
    path = copy_configs(tmp_path, "\n[actuation]\nenabled = false\nmin_queue_veh = 2\n")
    path.write_text(path.read_text().replace("max_wait_s = 120 ", "max_wait_s = 90 "))
    config = load_agent_config(path)
    assert not config.actuation_enabled
    assert (config.actuation_params.min_queue_veh, config.actuation_params.max_wait_s) == \
        (2.0, 90.0)


def test_local_actuation_without_coils_is_off_or_refused(tmp_path):
    path = copy_configs(tmp_path)
    without_actuation_coils(path.parent / "modbus-elm-1st.toml")
    assert not load_agent_config(path).actuation_enabled  # by default: off
    path.write_text(path.read_text().replace("# enabled = true", "enabled = true"))
    with pytest.raises(ConfigError, match=r"needs phase.hold or phase.force_off coils.*"
                                          r"\(key actuation.enabled\)") as err:
        load_agent_config(path)
    assert path.read_text().splitlines()[err.value.line - 1].startswith("enabled = true")


def test_health_thresholds_keep_their_hysteresis(tmp_path):
    path = copy_configs(tmp_path)
    path.write_text(path.read_text().replace("stuck_on_s = 180 ", "stuck_on_s = 30 "))
    with pytest.raises(ConfigError, match="detector_health.stuck_on_clear_s: must be below"):
        load_agent_config(path)


def test_the_interval_error_names_its_line(tmp_path):
    path = copy_configs(tmp_path, "\n[aggregation]\ninterval_s = 30\n")
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert path.read_text().splitlines()[err.value.line - 1] == "interval_s = 30"


def test_a_negative_startup_grace_is_refused(tmp_path):
    path = copy_configs(tmp_path)
    path.write_text(path.read_text().replace("startup_grace_s = 60 ", "startup_grace_s = -1 "))
    with pytest.raises(ConfigError, match="central.startup_grace_s"):
        load_agent_config(path)


def test_a_key_file_that_is_no_ed25519_key_is_refused(tmp_path):
    path = copy_configs(tmp_path)
    (path.parent / "keys" / "example-central.pub").write_text("not a key\n")
    with pytest.raises(ConfigError, match="'central'.*not an Ed25519 public key"):
        load_agent_config(path)


def test_a_local_plan_the_registers_cannot_carry_is_refused(tmp_path):
    path = copy_configs(tmp_path)
    plan = path.parent / "plans" / "elm-1st-peak.toml"
    plan.write_text(plan.read_text().replace("offset = 0.0", "offset = 10.05"))
    with pytest.raises(ConfigError, match="elm-1st-peak.toml cannot be written to the "
                                          "controller.*resolution"):
        load_agent_config(path)


# --- tsc-edge run ---------------------------------------------------------------------------
def test_run_hands_the_checked_config_to_the_agent(monkeypatch):
    from edge_agent import runtime_agent

    seen = []
    monkeypatch.setattr(runtime_agent, "run_agent",
                        lambda config, log_level: seen.append((config, log_level)) or 0)
    assert cli.main(["run", "--config", str(AGENT), "--log-level", "DEBUG"]) == 0
    assert seen[0][0].intersection.id == "elm-1st" and seen[0][1] == "DEBUG"


def test_run_refuses_a_bad_config_before_starting_anything(tmp_path, capsys):
    path = copy_configs(tmp_path, "\n[aggregation]\ninterval_s = 30\n")
    assert cli.main(["run", "--config", str(path)]) == cli.EXIT_BAD_INPUT
    assert "measurement_interval_s" in capsys.readouterr().err


def test_run_without_the_edge_extra_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "edge_agent.runtime_agent", None)
    assert cli.main(["run", "--config", str(AGENT)]) == cli.EXIT_BAD_INPUT
    assert "needs the edge extra" in capsys.readouterr().err


def test_run_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config FILE" in out and "SIGTERM" in out
