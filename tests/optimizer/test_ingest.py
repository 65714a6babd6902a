"""Ingest: decode, dedup, store, status and acks; the worker thread; topic filters; config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.messages import (
    Ack, EdgeMode, Event, EventKind, Events, Heartbeat, LaneMeasurement, Measurement, Status,
    encode, offline_status,
)
from edge_agent.topics import TopicKind, topic
from optimizer.central_config import load_central_config
from optimizer.central_service import subscriptions
from optimizer.history import History
from optimizer.ingest import Ingest, IngestWorker, Received
from optimizer.state import Health, MemoryState, health_of

from conftest import CONFIGS

T0 = 1_800_000_000.0
SITE, X = "downtown", "elm-1st"


def measurement(seq: int, start: float = T0 - 60, x: str = X) -> Measurement:
    return Measurement(site=SITE, intersection_id=x, seq=seq, interval_start=start,
                       interval_s=60.0, lanes=(LaneMeasurement(lane="elm-1st_N_0", count=9,
                                                               flow_vph=540.0, occupancy=0.2),))


def rx(msg, kind: TopicKind, x: str = X, token=None, at: float = T0) -> Received:
    return Received(topic(SITE, x, kind), encode(msg), at, token)


@pytest.fixture
def parts():
    history, state, acks = History(":memory:"), MemoryState(), []
    ingest = Ingest(history, state, site=SITE, intersections=[X, "elm-2nd"],
                    on_ack=lambda a, t: acks.append(a))
    return ingest, history, state, acks


def test_each_measurement_is_stored_once_despite_repeats_and_disorder(parts) -> None:
    ingest, history, _, _ = parts
    batch = [rx(measurement(s), TopicKind.MEASUREMENTS) for s in (5, 9, 5, 7, 9)]
    ingest.process(batch)
    ingest.process([rx(measurement(5), TopicKind.MEASUREMENTS)])  # a later redelivery
    assert history.count("measurements") == 3
    assert (ingest.stats.measurements, ingest.stats.duplicates) == (3, 3)


def test_late_data_is_kept_within_retention_and_refused_beyond(parts) -> None:
    ingest, history, _, _ = parts
    ingest.process([rx(measurement(1, T0 - 3 * 86400), TopicKind.MEASUREMENTS),
                    rx(measurement(2, T0 - 30 * 86400), TopicKind.MEASUREMENTS)])
    assert history.count("measurements") == 1 and ingest.stats.too_old == 1


def test_bad_and_foreign_payloads_are_counted_not_raised(parts, caplog) -> None:
    ingest, history, _, _ = parts
    hb = Heartbeat(site=SITE, seq=1, t=T0, source="c")
    ingest.process([Received(topic(SITE, X, "measurements"), b"{not json", T0),
                    Received(topic(SITE, X, "measurements"), b'{"v": 1}', T0),
                    rx(measurement(1, x="oak-9th"), TopicKind.MEASUREMENTS, x="oak-9th"),
                    rx(measurement(1), TopicKind.MEASUREMENTS, x="elm-2nd"),  # topic mismatch
                    rx(hb, TopicKind.HEARTBEAT),
                    Received("tsc/v1/bad", b"{}", T0),
                    rx(measurement(3), TopicKind.MEASUREMENTS)])
    assert ingest.stats.rejected == 6 and history.count("measurements") == 1
    assert sum("further drops" in r.message for r in caplog.records) == 3  # once per kind


def test_status_and_last_will_reach_the_state(parts) -> None:
    ingest, history, state, _ = parts
    online = Status(site=SITE, intersection_id=X, t=T0, online=True, mode=EdgeMode.CENTRAL,
                    controller_ok=True)
    ingest.process([rx(online, TopicKind.STATUS)])
    assert health_of(state.status(X), T0, 300) == Health.OK
    ingest.process([rx(offline_status(SITE, X), TopicKind.STATUS, at=T0 + 60)])
    assert health_of(state.status(X), T0 + 60, 300) == Health.OFFLINE
    assert history.count("status_log") == 2


def test_acks_and_events(parts) -> None:
    ingest, history, _, acks = parts
    ack = Ack(site=SITE, intersection_id=X, plan_id=4, t=T0, accepted=True)
    events = Events(site=SITE, intersection_id=X, seq=11,
                    events=(Event(t=T0 - 5, kind=EventKind.DETECTOR_ON, ref="d1"),))
    ingest.process([rx(ack, TopicKind.ACK), rx(events, TopicKind.EVENTS),
                    rx(events, TopicKind.EVENTS)])
    assert acks == [ack] and history.count("acks") == 1
    assert (history.count("events"), ingest.stats.duplicates) == (1, 1)


def test_the_worker_settles_only_after_storing(parts) -> None:
    ingest, history, _, _ = parts
    settled: list = []

    def settle(tokens):
        settled.append((tokens, history.count("measurements")))

    worker = IngestWorker(ingest, settle=settle, max_batch=3)
    worker.start()
    for seq in range(7):
        worker.offer(rx(measurement(seq), TopicKind.MEASUREMENTS, token=("t", seq)))
    assert worker.wait_idle(5)
    worker.stop()
    tokens = [t for batch, _ in settled for t in batch]
    assert tokens == [("t", s) for s in range(7)]
    for batch, stored in settled:  # each batch was on disk when it was settled
        assert stored >= batch[-1][1] + 1


def test_subscriptions_for_whole_site_regions_and_replicas() -> None:
    every = ["a", "b", "c"]
    assert subscriptions("s", every, every) == [
        "tsc/v1/s/+/measurements", "tsc/v1/s/+/events", "tsc/v1/s/+/ack", "tsc/v1/s/+/status"]
    shared = subscriptions("s", every, every, share_group="opt")
    assert shared[:2] == ["$share/opt/tsc/v1/s/+/measurements", "$share/opt/tsc/v1/s/+/events"]
    assert shared[2:] == ["tsc/v1/s/+/ack", "tsc/v1/s/+/status"]  # never shared
    region = subscriptions("s", ["b", "a"], every, share_group="opt", role="ingest")
    assert region == ["$share/opt/tsc/v1/s/a/measurements", "$share/opt/tsc/v1/s/b/measurements",
                      "$share/opt/tsc/v1/s/a/events", "$share/opt/tsc/v1/s/b/events"]


# --- the config file -------------------------------------------------------------------------
def test_the_example_config_loads() -> None:
    config = load_central_config(CONFIGS / "central.toml", check_key=False)
    assert config.site.site == "elm-corridor"
    assert [r.id for r in config.owned_regions] == ["elm"]
    assert [start for start, _ in config.time_of_day["elm-1st"]] == [0, 420, 1140]
    assert config.client_id == "tsc-central-central-1"
    with pytest.raises(ConfigError, match="signing key"):
        load_central_config(CONFIGS / "central.toml")  # the example's key is not shipped


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    for name in ("corridor-3.toml", "plans"):
        src = CONFIGS / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    text = (CONFIGS / "central.toml").read_text()
    assert old in text
    path = tmp_path / "central.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("old,new,message", [
    ("replan_s = 300", "replan_s = 300\ncolour = 1", "colour"),
    ('"elm-2nd", "elm-3rd"]', '"elm-2nd", "elm-9th"]', "elm-9th"),
    ('replan_s = 300', 'replan_s = 300\n[[regions]]\nid = "b"\nintersections = ["elm-1st"]',
     "belongs to one region"),
    ('regions = []', 'regions = ["nope"]', "unknown regions"),
    ('role = "all"', 'role = "both"', "loop.role"),
    ('timezone = "UTC"', 'timezone = "Mars/Olympus"', "time zone"),
    ('plan = "plans/elm-1st-peak.toml"', 'plan = "plans/main-oak-am-peak.toml"', "guard"),
    ('start = "07:00"', 'start = "00:00"', "increasing"),
    ('# [regions.validation]\n# scenario = "../out/demo"',
     '[regions.validation]\nscenario = "missing"', "scenario not found"),
])
def test_bad_configs_are_refused_with_the_key(tmp_path, old, new, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_central_config(_variant(tmp_path, old, new), check_key=False)


def test_stored_measurements_reach_a_state_that_keeps_them() -> None:
    class LiveState(MemoryState):
        def __init__(self) -> None:
            super().__init__()
            self.live: list[Measurement] = []

        def add_measurement(self, m: Measurement) -> None:
            self.live.append(m)

    state = LiveState()
    ingest = Ingest(History(":memory:"), state, site=SITE, intersections=[X])
    ingest.process([rx(measurement(s), TopicKind.MEASUREMENTS) for s in (1, 2, 1)])
    assert [m.seq for m in state.live] == [1, 2]  # first copies only, after the commit


def test_tsc_central_run_refuses_a_bad_config(tmp_path, capsys) -> None:
    from optimizer.cli import main

    bad = tmp_path / "central.toml"
    bad.write_text('site_config = "nowhere.toml"\n')
    assert main(["run", "--config", str(bad)]) == 2
    assert "storage" in capsys.readouterr().err  # the first thing missing is named
