"""How much of each scenario to run: the full set, or --quick."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    cold_ns: tuple[int, ...] = (
        1,
        50,
        200,
    )  # cold start sizes; stop-all is timed at the largest
    runs: int = 5  # daemon launches per size and system
    n: int = 200  # services in the steady-state, idle and storm scenarios
    status_calls: int = 200  # library round trips (capped at status_max_s per system)
    status_max_s: float = 20.0
    cli_runs: int = 20
    restart_samples: int = 20
    idle_window_s: float = 30.0
    idle_slice_s: float = 5.0  # the window is cut into slices: one CPU% sample each
    idle_python: bool = True  # also idle with N Python workers (supervise: heartbeating at 1 Hz)
    storm_window_s: float = 20.0
    storm_slice_s: float = 2.0
    hang_samples: int = 5
    scale_ns: tuple[int, ...] = (200, 1000, 2000)  # the scale curve (--scale): supervise alone
    scale_runs: int = 3  # daemon launches per N and system; status, idle and RSS in the last
    scale_idle_s: float = 15.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            cold_ns=(50,),
            runs=3,
            n=50,
            status_calls=100,
            status_max_s=5.0,
            cli_runs=5,
            restart_samples=3,
            idle_window_s=6.0,
            idle_slice_s=2.0,
            idle_python=False,
            storm_window_s=6.0,
            hang_samples=3,
            scale_runs=2,
            scale_idle_s=6.0,
        )

    def sized(self, n: int) -> Plan:
        """Every scenario at `n` services."""
        return replace(self, cold_ns=(n,), n=n)
