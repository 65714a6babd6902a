"""A thin adapter around one running SUMO simulation (libsumo by default, traci as fallback).

The session starts SUMO with RESCO's settings plus what our KPIs need, gives controllers the
underlying API as :attr:`SumoSession.conn` (the ``libsumo`` module or a traci connection; both
offer ``trafficlight``, ``lane``, ``inductionloop``, ``lanearea``, ...), steps it to the end of
the episode, and leaves SUMO's own outputs on disk for :mod:`simulation.kpi`.

SUMO options always set, and why:

* ``--time-to-teleport -1`` (RESCO): gridlock shows up as delay, not as vanished vehicles.
* ``--tripinfo-output`` with ``.write-unfinished`` and ``.write-undeparted``: delay over all
  vehicles, including those still driving or still waiting to enter at the end.
* ``--statistic-output``: teleport and safety counts (collisions, emergency braking/stops).
* ``--collision.action warn``: a collision is counted and reported instead of silently
  teleporting the vehicles away (SUMO's default).
* ``--duration-log.statistics``, ``--no-step-log``; warnings are NOT disabled (RESCO passes
  ``--no-warnings``), so safety warnings still reach stderr.
* ``--seed N``, or ``--random`` only when the seed is None.

stdout is kept clean for callers that print JSON: SUMO's messages (libsumo writes them to the
process's own stdout; the traci server to its stdout) go to ``sumo-stdout.log`` in the output
folder, and traci's "Retrying in 1 seconds" notices are swallowed.

libsumo runs one simulation per process, and (SUMO 1.28) an episode run after another one in
the same process is not reproducible: cologne1 with seed 0 gave 41.62 s mean delay in every fresh
process but 42.74 s in some later runs of a process (presumably static state that ``close()`` does
not reset, e.g. SUMO's numerical id counters; not verified). So a session uses libsumo only for the first episode
of a process and falls back to traci (a fresh SUMO process each time, reproducible, 3-8x slower)
afterwards, unless ``reuse_libsumo=True``. For speed and reproducibility, run each episode in a
fresh process (``run_episode(..., isolate=True)`` or a pool with ``max_tasks_per_child=1``).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from simulation.kpi import Kpis, SimStatistics, compute_kpis, parse_statistics, parse_tripinfo
from simulation.scenario import Demand, Scenario, check_well_formed, load_scenario, read_demand
from simulation.sumo_binaries import find_binary, sumo_env

__all__ = ["SumoError", "SumoSession", "build_sumo_args"]

_log = logging.getLogger(__name__)
_labels = itertools.count()
# libsumo episodes started in this process; see the module docstring for why it matters.
_libsumo_starts = 0
_reuse_warned = False


_START_LOCK = threading.Lock()


class SumoError(RuntimeError):
    """SUMO failed to start, or the session was used wrongly (stepping past the end)."""


@contextlib.contextmanager
def _stdout_fd_to(path: Path) -> Iterator[None]:
    """Point file descriptor 1 at ``path`` for the block (libsumo's C++ writes there).

    Redirecting ``sys.stdout`` is not enough: SUMO writes to the C++ ``std::cout``. This
    affects the whole process for the block's duration, so it wraps only start and close.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def build_sumo_args(scenario: Scenario, *, begin: float, end: float, seed: int | None, tripinfo: Path,
                    statistics: Path, summary: Path | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """SUMO options for an episode (without the binary name); see the module docstring.

    Public so that a bare ``sumo`` run (benchmarks, debugging) uses exactly the session's options.
    """
    args = scenario.sumo_args() + [
        "--begin", repr(float(begin)), "--end", repr(float(end)),
        *(["--random"] if seed is None else ["--seed", str(int(seed))]),
        "--time-to-teleport", "-1",
        "--no-step-log", "true",
        "--duration-log.statistics", "true",
        "--collision.action", "warn",
        "--tripinfo-output", str(tripinfo),
        "--tripinfo-output.write-unfinished", "true",
        "--tripinfo-output.write-undeparted", "true",
        "--statistic-output", str(statistics),
    ]
    if summary is not None:
        args += ["--summary-output", str(summary)]
    return args + list(extra_args)


class SumoSession:
    """One SUMO simulation of a scenario's episode; use as a context manager.

    Args:
        scenario: a :class:`Scenario` or a path :func:`load_scenario` accepts.
        seed: SUMO's random seed; None means ``--random`` (not reproducible).
        begin: episode start; defaults to the scenario's.
        end: episode end; defaults to the scenario's. Not together with ``seconds``.
        seconds: episode length from ``begin`` (a short horizon for tests or previews).
        output_dir: keep SUMO's outputs here (``tripinfo.xml``, ``statistics.xml``,
            ``summary.xml``, ``sumo-stdout.log``); created if needed. Without it, the tripinfo
            and statistics go to a temporary folder removed when the session exits.
        use_libsumo: use libsumo when possible (3-8x faster than traci); False forces traci.
        reuse_libsumo: use libsumo even if it already ran an episode in this process (fast,
            but results may differ from a fresh process).
        gui: run ``sumo-gui`` through traci (starts playing, quits at the end).
        extra_args: further SUMO options; they must not repeat the options set here.

    Attributes:
        conn: the ``libsumo`` module or the traci connection, for controllers
            (``conn.trafficlight``, ``conn.lane``, ``conn.inductionloop``, ``conn.lanearea``...).
        backend: ``"libsumo"`` or ``"traci"``.
        begin, end, step_length: the episode window and SUMO's step, in seconds.
        tripinfo_path, statistics_path, summary_path, stdout_log_path: SUMO's outputs.
        colliding_vehicle_steps, emergency_stopping_vehicle_steps: live safety counts from the
            API, summed over steps (a vehicle counts once per step it is involved).

    Raises:
        SumoError: SUMO did not start (its own message is on stderr).
        ScenarioError: the scenario path is invalid.
        ValueError: bad begin/end/seconds.
    """

    def __init__(self, scenario: Scenario | str | os.PathLike[str], *, seed: int | None = 0,
                 begin: float | None = None, end: float | None = None, seconds: float | None = None,
                 output_dir: str | os.PathLike[str] | None = None, use_libsumo: bool = True,
                 gui: bool = False, reuse_libsumo: bool = False, extra_args: Sequence[str] = ()) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.seed = seed
        self.begin = float(self.scenario.begin if begin is None else begin)
        if seconds is not None and end is not None:
            raise ValueError("give either end or seconds, not both")
        if seconds is not None:
            if seconds <= 0:
                raise ValueError(f"seconds must be positive, got {seconds}")
            self.end = self.begin + float(seconds)
        else:
            self.end = float(self.scenario.end if end is None else end)
        if self.end <= self.begin:
            raise ValueError(f"end ({self.end}) must be after begin ({self.begin})")

        self._temp_dir = None if output_dir is not None else Path(tempfile.mkdtemp(prefix="tsc-sumo-"))
        self.output_dir = Path(output_dir) if output_dir is not None else self._temp_dir
        assert self.output_dir is not None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tripinfo_path = self.output_dir / "tripinfo.xml"
        self.statistics_path = self.output_dir / "statistics.xml"
        self.summary_path = self.output_dir / "summary.xml" if output_dir is not None else None
        self.stdout_log_path = self.output_dir / "sumo-stdout.log"

        self._demand: Demand | None = None
        self._closed = False
        self._steps = 0
        self.colliding_vehicle_steps = 0
        self.emergency_stopping_vehicle_steps = 0
        self._traci_label: str | None = None
        try:
            check_well_formed(self.scenario)  # SUMO segfaults on malformed XML
            self.backend = self._choose_backend(use_libsumo and not gui, reuse_libsumo)
            args = self.sumo_args(extra_args)
            # Starting redirects stdout (sys.stdout for traci, file descriptor 1 for
            # libsumo): two threads starting at once would leave it pointing at a discarded
            # buffer, so sessions start one at a time.
            with _START_LOCK:
                if self.backend == "libsumo":
                    self.conn = self._start_libsumo(args)
                else:
                    self.conn = self._start_traci(args, gui)
            self.step_length = float(self.conn.simulation.getDeltaT())
            self._time = float(self.conn.simulation.getTime())
        except BaseException:
            if hasattr(self, "conn"):
                with contextlib.suppress(Exception):
                    self.close()
            self._remove_temp()
            raise

    # ------------------------------------------------------------------ start-up

    def sumo_args(self, extra_args: Sequence[str] = ()) -> list[str]:
        """SUMO options for this session (without the binary name)."""
        return build_sumo_args(self.scenario, begin=self.begin, end=self.end, seed=self.seed,
                               tripinfo=self.tripinfo_path, statistics=self.statistics_path,
                               summary=self.summary_path, extra_args=extra_args)

    @staticmethod
    def _choose_backend(use_libsumo: bool, reuse_libsumo: bool) -> str:
        if not use_libsumo:
            return "traci"
        try:
            import libsumo
        except ImportError:
            _log.warning("libsumo is not importable; using traci (slower)")
            return "traci"
        if libsumo.simulation.isLoaded():
            _log.warning("a libsumo simulation is already running in this process; using traci")
            return "traci"
        if _libsumo_starts and not reuse_libsumo:
            global _reuse_warned
            if not _reuse_warned:  # once per process: loops of episodes would repeat it
                _reuse_warned = True
                _log.warning("libsumo already ran an episode in this process and would not reproduce a fresh "
                             "run; using traci (run each episode in a fresh process to keep libsumo's speed)")
            return "traci"
        return "libsumo"

    def _start_libsumo(self, args: list[str]) -> Any:
        import libsumo

        global _libsumo_starts
        _libsumo_starts += 1
        try:
            with _stdout_fd_to(self.stdout_log_path):
                libsumo.start(["sumo", *args])
        except Exception as exc:
            with contextlib.suppress(Exception):
                libsumo.close()
            raise SumoError(f"SUMO (libsumo) failed to start for {self.scenario.name}: {exc}; "
                            f"SUMO's message is on stderr; options: {' '.join(args)}") from exc
        return libsumo

    def _start_traci(self, args: list[str], gui: bool) -> Any:
        import traci
        from sumolib.miscutils import getFreeSocketPort

        binary = find_binary("sumo-gui" if gui else "sumo")
        cmd = [str(binary), *args] + (["--start", "--quit-on-end"] if gui else [])
        label = f"tsc-session-{os.getpid()}-{next(_labels)}"
        last_error: Exception | None = None
        exit_note = ""
        for _ in range(3):  # a free port can be taken by someone else before SUMO binds it
            port = getFreeSocketPort()
            with open(self.stdout_log_path, "ab") as log:
                # Our own Popen instead of traci.start: it lets us pass an environment whose
                # SUMO_HOME is the wheel (traci.start inherits whatever os.environ holds).
                proc = subprocess.Popen([*cmd, "--remote-port", str(port)], stdout=log, env=sumo_env())
            try:
                # traci prints "Retrying in 1 seconds" on stdout while SUMO boots.
                with contextlib.redirect_stdout(io.StringIO()):
                    traci.init(port, numRetries=60, label=label, proc=proc, doSwitch=False)
                self._traci_label = label
                return traci.getConnection(label)
            except Exception as exc:  # traci raises FatalTraCIError/TraCIException/OSError
                last_error = exc
                quit_by_itself = proc.poll() is not None
                proc.kill()
                proc.wait()
                if quit_by_itself:
                    exit_note = f"; SUMO exited with code {proc.returncode}"
                    break  # SUMO itself failed (bad input): another port won't help
        raise SumoError(f"SUMO (traci, {binary.name}) failed to start for {self.scenario.name}: {last_error}"
                        f"{exit_note}; SUMO's message is on stderr; options: {' '.join(args)}") from last_error

    # ------------------------------------------------------------------ running

    @property
    def time(self) -> float:
        """Current simulation time in seconds."""
        return self._time

    @property
    def done(self) -> bool:
        """True once the episode's end is reached (stepping further is an error)."""
        return self._closed or self._time >= self.end - 1e-9

    @property
    def steps(self) -> int:
        """Simulation steps taken so far."""
        return self._steps

    @property
    def demand(self) -> Demand:
        """Vehicles the route files plan to insert during this episode (read once, cached)."""
        if self._demand is None:
            self._demand = read_demand(self.scenario, self.begin, self.end, step_length=self.step_length)
        return self._demand

    def step(self) -> float:
        """Advance one simulation step; return the new time.

        Also accumulates the API's live safety counts (vehicles in a collision, vehicles making
        an emergency stop, per step); final counts come from the statistic output.

        Raises:
            SumoError: the episode has already ended or the session is closed.
        """
        if self.done:
            raise SumoError(f"episode of {self.scenario.name} already ended at {self._time} (end {self.end})")
        sim = self.conn.simulation
        self.conn.simulationStep()
        self._steps += 1
        self._time = float(sim.getTime())
        self.colliding_vehicle_steps += sim.getCollidingVehiclesNumber()
        self.emergency_stopping_vehicle_steps += sim.getEmergencyStoppingVehiclesNumber()
        return self._time

    def run_to_end(self) -> None:
        """Step until the episode's end (the net's own programmes, no controller)."""
        while not self.done:
            self.step()

    # ------------------------------------------------------------------ ending

    def close(self) -> None:
        """Stop SUMO, which writes the tripinfo and statistic files. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.backend == "libsumo":
            with _stdout_fd_to(self.stdout_log_path):
                self.conn.close()
        else:
            self.conn.close()  # waits for the SUMO process to finish writing

    def statistics(self) -> SimStatistics:
        """SUMO's end-of-run statistics (closes the session first)."""
        self.close()
        return parse_statistics(self.statistics_path)

    def kpis(self) -> Kpis:
        """Episode KPIs from SUMO's outputs and the demand (closes the session first)."""
        self.close()
        return compute_kpis(parse_tripinfo(self.tripinfo_path), self.demand, self.statistics())

    def _remove_temp(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> SumoSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close SUMO and remove the temporary output folder (read outputs before leaving)."""
        try:
            self.close()
        finally:
            self._remove_temp()

    def __repr__(self) -> str:
        return (f"SumoSession({self.scenario.name!r}, backend={self.backend!r}, seed={self.seed}, "
                f"time={self._time}, begin={self.begin}, end={self.end})")
