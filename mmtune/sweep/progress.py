"""Live progress of a sweep: a rich view on a terminal, plain lines in logs (DESIGN §2).

On a terminal, :class:`SweepProgress` keeps one ``rich.live.Live`` view up to date: bars for trials
and epochs with an ETA, counts by status (which double as the legend of the status symbols), a table
with one row per *configuration* (the trial config without its seed: method, swept parameters under
their short names, its seeds by status, epochs run/planned, the selection metric over its seeds) and
the best configuration so far; trial errors are also printed above the view. Elsewhere (CI, a log
file) it prints one plain line per trial event instead — start, an epoch line at most every
``line_interval_s`` per trial, completion / early stop / error — and a final summary.

The ETA comes from epoch durations (Tune's ``time_this_iter_s``), never from the wall time since the
start, which holds Ray's start-up: remaining epochs × mean epoch time / trials running side by side.
Until one epoch has finished there is no ETA ("—").

The live view stops at Tune's ``on_experiment_end`` (which Tune also calls when the run fails or is
interrupted); ``close()`` or a ``with SweepProgress(...)`` block stops it if the driver dies first.

Selection follows DESIGN §4 and the report's rule (:mod:`mmtune.report.data`): the "best" is judged
on a validation metric only; a configuration is scored by the mean over its *finished* seeds of each
seed's best value. Seeds stopped early (ASHA) are never averaged with finished ones — the table shows
their mean apart, in a "stopped" column — and failed seeds count nowhere. Until some configuration has
a finished seed, running seeds' values so far stand in, marked ``~``. Per result the callback
only updates a few numbers; the view is rebuilt at most ``refresh_per_second`` times a second,
from the driver's own loop (``on_step_end``), so no extra thread touches the state.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mmtune.store.schema import (
    ENDED_STATUSES,
    ERROR,
    PAUSED,
    PENDING,
    RUNNING,
    STATUSES,
    STOPPED_EARLY,
    TERMINATED,
    config_key,
    ended_status,
)
from mmtune.store.writer import result_metrics, trial_error_text

__all__ = ["SweepProgress"]

_STYLE = {PENDING: "dim", RUNNING: "cyan", PAUSED: "blue", TERMINATED: "green", STOPPED_EARLY: "yellow", ERROR: "red"}
# The live view's short forms of a status; the status counts line spells each one out once.
_SYMBOL = {PENDING: "·", RUNNING: "▸", PAUSED: "‖", TERMINATED: "✓", STOPPED_EARLY: "■", ERROR: "✗"}
_WORD = {PENDING: "pending", RUNNING: "running", PAUSED: "paused", TERMINATED: "finished", STOPPED_EARLY: "stopped early",
         ERROR: "error"}
_ALWAYS_COUNTED = (PENDING, RUNNING, TERMINATED, STOPPED_EARLY, ERROR)  # others only when some trial has them
_ACTIVE = (RUNNING, PAUSED)  # started and not ended: a paused seed waits at an ASHA rung
_UNSET = object()


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``dotted``; a key may itself hold dots (a composed method's ``params.opm.lam``)."""
    node: Any = config
    parts = dotted.split(".")
    while parts:
        if not isinstance(node, Mapping):
            return _UNSET
        for n in range(len(parts), 0, -1):  # the longest key that matches, e.g. "opm.lam" before "opm"
            key = ".".join(parts[:n])
            if key in node:
                node, parts = node[key], parts[n:]
                break
        else:
            return _UNSET
    return node


def _fmt_value(value: Any) -> str:
    if value is _UNSET:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _fmt_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"  # no estimate yet
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _symbol(status: str) -> str:
    return _SYMBOL.get(status, "–")


def _word(status: str) -> str:
    return _WORD.get(status, status.lower().replace("_", " "))


def _fmt_mean(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def short_names(keys: Sequence[str], *, taken: Sequence[str] = ()) -> dict[str, str]:
    """Column headers for swept keys: the last part (``params.alpha`` → ``alpha``), with as many parts
    before it as it takes to tell keys apart (``params.opm.lam``, ``params.amss.lam`` → ``opm.lam``,
    ``amss.lam``) or from a name in ``taken`` (the table's own columns: ``train.epochs`` → ``train.epochs``)."""
    parts = {k: k.split(".") for k in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        names = {k: ".".join(parts[k][-depth[k]:]) for k in keys}
        used = [*names.values(), *taken]
        clashing = [k for k in keys if used.count(names[k]) > 1 and depth[k] < len(parts[k])]
        if not clashing:
            return names
        for k in clashing:
            depth[k] += 1


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(slots=True)
class _TrialView:
    trial_id: str
    method: str
    seed: int | None
    swept: dict[str, str]
    config_key: str
    max_epochs: int | None
    status: str = RUNNING
    epoch: int = 0
    value: float | None = None  # the selection metric at the latest epoch
    best: float | None = None  # its best value so far
    best_epoch: int | None = None
    error: str | None = None
    last_line: float = 0.0  # when the last plain line about this trial was printed
    reported: float | None = None  # when its last result arrived (times an epoch without time_this_iter_s)


@dataclass(slots=True)
class _ConfigView:
    """The seeds of one configuration (trials sharing a config_key), in the order they started."""

    key: str
    trials: list[_TrialView]

    def seeds(self, *statuses: str) -> list[_TrialView]:
        return [v for v in self.trials if v.status in statuses]

    def values(self, *statuses: str) -> list[float]:
        """Each seed's best value of the metric, for the seeds in ``statuses`` that have one."""
        return [v.best for v in self.trials if v.status in statuses and v.best is not None]


class SweepProgress(tune.Callback):
    """A Tune callback that shows a sweep's progress on the driver.

    ``swept`` are the dotted config keys that vary in the sweep (``params.tau``, ``model.fusion``,
    ``method``); each becomes a column. ``live=None`` picks the rich view when ``console`` is a
    terminal and plain lines otherwise. ``line_interval_s`` spaces the plain per-epoch lines of one
    trial (0: a line for every epoch).
    """

    refresh_per_second = 2.0
    _clock = staticmethod(time.monotonic)  # seconds; tests replace it

    def __init__(
        self,
        *,
        total_trials: int | None,
        metric: str = "val_acc",
        mode: str = "max",
        swept: Sequence[str] = (),
        console: Console | None = None,
        live: bool | None = None,
        max_rows: int = 12,
        line_interval_s: float = 5.0,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min', but got {mode=}.")
        if metric.startswith("test"):
            raise ValueError(
                f"the best configuration is chosen on validation only (DESIGN §4), but got {metric=}. "
                "Use a validation metric such as 'val_acc'."
            )
        if total_trials is not None and total_trials < 0:
            raise ValueError(f"`total_trials >= 0` must hold, but got {total_trials=}.")
        if max_rows < 1:
            raise ValueError(f"`max_rows >= 1` must hold, but got {max_rows=}.")
        self.total_trials = total_trials
        self.metric = metric
        self.mode = mode
        # method (or a variant's label) and seed are always shown in their own columns
        self.swept = [k for k in swept if k not in ("method", "label", "seed")]
        self.console = console if console is not None else Console(highlight=False)
        self.live = self.console.is_terminal if live is None else bool(live)
        self.max_rows = max_rows
        self.line_interval_s = line_interval_s
        self._live_explicit = live
        self._views: dict[str, _TrialView] = {}
        self._ray_trials: list[Any] = []
        self._start: float | None = None
        self._end: float | None = None
        self._epochs_done = 0
        self._epoch_seconds = 0.0  # summed durations of the epochs timed so far (the ETA's rate)
        self._epochs_timed = 0
        self._peak_running = 0  # the most trials seen running side by side
        self._live_view: Live | None = None
        self._last_refresh = 0.0
        self._closed = False

    # Tuner pickles its RunConfig (callbacks included): keep the settings, not the console or Live.
    def __getstate__(self) -> dict[str, Any]:
        return {
            "total_trials": self.total_trials, "metric": self.metric, "mode": self.mode, "swept": self.swept,
            "live": self._live_explicit, "max_rows": self.max_rows, "line_interval_s": self.line_interval_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def attach(self, *, console: Console | None = None, live: bool | None = None) -> None:
        """Show progress on ``console`` (``live`` as in the constructor): for a view that came back
        unpickled from a Tuner's saved run config, e.g. on ``mmtune resume``."""
        self.close()
        self._closed = False
        self.console = console if console is not None else Console(highlight=False)
        self.live = self.console.is_terminal if live is None else bool(live)
        self._live_explicit = live

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- Tune callbacks ----------------------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any) -> None:
        if self.total_trials is None and total_num_samples is not None and total_num_samples >= 0:
            self.total_trials = total_num_samples
        self._begin()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._begin()
        self._ray_trials = trials
        view = self._views.get(trial.trial_id)
        if view is None:
            view = self._views[trial.trial_id] = self._new_view(trial)
        view.status, view.error, view.reported = RUNNING, None, None
        view.last_line = self._clock()
        self._peak_running = max(self._peak_running, sum(v.status == RUNNING for v in self._views.values()))
        self._line(f"start    {view.trial_id}  {self._describe(view)}")
        self._refresh()

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self._views.get(trial.trial_id)
        if view is not None:
            view.status, view.reported = RUNNING, None
            self._line(f"restore  {view.trial_id}  from epoch {view.epoch}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._ray_trials = trials
        view = self._views.get(trial.trial_id)
        if view is None:  # a callback that joined late (or a restored experiment)
            view = self._views[trial.trial_id] = self._new_view(trial)
        epoch, metrics = result_metrics(result)
        now = self._clock()
        if epoch == view.epoch + 1:
            self._time_epoch(view, result, now)
        view.reported = now
        if epoch > view.epoch:
            self._epochs_done += epoch - view.epoch
        elif epoch < view.epoch:  # re-run after a restore from an earlier checkpoint
            self._epochs_done -= view.epoch - epoch
        view.epoch, view.status = epoch, RUNNING
        value = metrics.get(self.metric)
        view.value = value
        if value is not None and math.isfinite(value) and (view.best is None or self._better(value, view.best)):
            view.best, view.best_epoch = value, epoch
        if not self.live and now - view.last_line >= self.line_interval_s:
            view.last_line = now
            self._line(
                f"epoch    {view.trial_id}  {self._epoch_text(view)}  {self.metric}={_fmt_metric(value)} "
                f"best={_fmt_metric(view.best)}  | {self._overall_text()}"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self._ended_view(trials, trial)
        view.status = ended_status(view.epoch, view.max_epochs)
        best = f"best {self.metric}={_fmt_metric(view.best)}"
        if view.best_epoch is not None:
            best += f" @ epoch {view.best_epoch}"
        label = "done    " if view.status == TERMINATED else "stopped "
        self._line(f"{label} {view.trial_id}  {view.status} at epoch {self._epoch_text(view)}  {best}")
        self._refresh(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self._ended_view(trials, trial)
        view.status = ERROR
        view.error = _one_line(trial_error_text(trial))
        self._line(f"error    {view.trial_id}  ERROR at epoch {self._epoch_text(view)}: {view.error}", always=True)
        self._refresh(force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self._ended_view(trials, trial)
        view.status = PENDING
        error = _one_line(trial_error_text(trial))
        self._line(f"retry    {view.trial_id}  failed at epoch {view.epoch}, Tune retries it: {error}", always=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._ray_trials = trials
        for trial in trials:  # Tune has no pause callback: follow its trials' status
            view = self._views.get(trial.trial_id)
            if view is not None and view.status in _ACTIVE and getattr(trial, "status", None) in _ACTIVE:
                view.status = trial.status
        self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._ray_trials = trials
        self._end = self._clock()
        self._refresh(force=True)
        self.close()
        for line in self.summary_lines():
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Stop the live view (idempotent). Call it if the sweep dies before Tune's end callback."""
        live, self._live_view = self._live_view, None
        self._closed = True
        if live is not None:
            live.stop()

    # -- state -------------------------------------------------------------------------------------
    def _begin(self) -> None:
        if self._start is None:
            self._start = self._clock()
        if self.live and self._live_view is None and not self._closed:
            self._live_view = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
            self._live_view.start()

    def _new_view(self, trial: Any) -> _TrialView:
        from mmtune.engine.trial import parse_trial_config
        from mmtune.errors import ConfigError

        raw = trial.config
        try:
            config = parse_trial_config(raw).to_config()
        except (ConfigError, TypeError, ValueError, AttributeError):
            config = dict(raw)  # the trial will fail in setup with the same message
        epochs = _lookup(config, "train.epochs")
        seed = config.get("seed")
        return _TrialView(
            trial_id=trial.trial_id,
            method=str(config.get("label") or config.get("method", "?")),  # a variant's label names it best
            seed=seed if isinstance(seed, int) else None,
            swept={k: _fmt_value(_lookup(config, k)) for k in self.swept},
            config_key=config_key(config),
            max_epochs=epochs if isinstance(epochs, int) else None,
        )

    def _ended_view(self, trials: list, trial: Any) -> _TrialView:
        self._ray_trials = trials
        view = self._views.get(trial.trial_id)
        if view is None:  # failed before it started (e.g. in setup)
            view = self._views[trial.trial_id] = self._new_view(trial)
        return view

    def _time_epoch(self, view: _TrialView, result: Mapping[str, Any], now: float) -> None:
        """Add one epoch's duration to the ETA's rate: Tune's ``time_this_iter_s`` (the step alone,
        without actor start or setup), else the time since the trial's previous result."""
        seconds = result.get("time_this_iter_s")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            seconds = None if view.reported is None else now - view.reported
        if seconds is not None:
            self._epoch_seconds += seconds
            self._epochs_timed += 1

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def counts(self) -> dict[str, int]:
        """Trials by status; trials Tune has not started yet (or not created yet) are PENDING."""
        counts = dict.fromkeys(STATUSES, 0)
        for view in self._views.values():
            counts[view.status] = counts.get(view.status, 0) + 1
        seen = len(self._views) - counts[PENDING]
        if self.total_trials is not None:
            counts[PENDING] = max(self.total_trials - seen, counts[PENDING])
        else:
            counts[PENDING] += sum(1 for t in self._ray_trials if t.trial_id not in self._views)
        return counts

    def epochs(self) -> tuple[int, int]:
        """(epochs done, epochs planned): an ended trial plans what it ran; an unseen one the mean plan."""
        planned = 0
        plans = []
        for view in self._views.values():
            if view.max_epochs is not None:
                plans.append(view.max_epochs)
            if view.status in ENDED_STATUSES:
                planned += view.epoch
            else:
                planned += view.max_epochs if view.max_epochs is not None else view.epoch
        if self.total_trials is not None and plans:
            unseen = max(self.total_trials - len(self._views), 0)
            planned += round(unseen * statistics.fmean(plans))
        return self._epochs_done, max(planned, self._epochs_done)

    def eta_s(self) -> float | None:
        """Seconds left: epochs left × the mean epoch duration so far / the trials that run side by
        side. None until an epoch has been timed — the wall time since the start would count Ray's
        start-up and the first actors' setup as if they were epochs."""
        if self._epochs_timed == 0:
            return None
        done, planned = self.epochs()
        if planned <= done:
            return 0.0
        running = sum(v.status == RUNNING for v in self._views.values())
        parallel = max(running, self._peak_running, 1)
        if self.total_trials is not None:  # the last trials run alone
            ended = sum(v.status in ENDED_STATUSES for v in self._views.values())
            parallel = min(parallel, max(self.total_trials - ended, 1))
        return (planned - done) * (self._epoch_seconds / self._epochs_timed) / parallel

    def _configs(self) -> list[_ConfigView]:
        """The configurations seen so far, in the order Tune created their first trial (a grid sweep's
        spec order, so the baseline comes first)."""
        created = {t.trial_id: i for i, t in enumerate(self._ray_trials)}
        groups: dict[str, _ConfigView] = {}
        for view in self._views.values():
            groups.setdefault(view.config_key, _ConfigView(view.config_key, [])).trials.append(view)
        configs = list(groups.values())

        def order(config: _ConfigView) -> int:
            return min(created.get(v.trial_id, len(created) + 1) for v in config.trials)

        return sorted(configs, key=order)  # stable: configurations unknown to Tune's list keep their order

    def best(self) -> dict[str, Any] | None:
        """The best configuration so far, by the report's rule: the mean over its finished seeds of each
        seed's best validation value (``n`` = the seeds averaged). Seeds stopped early or failed are
        never averaged. While no configuration has a finished seed, running seeds' values so far stand
        in (``basis`` "running"); None when neither exists."""
        configs = self._configs()
        for basis, statuses in (("finished", (TERMINATED,)), ("running", _ACTIVE)):
            scored = [(statistics.fmean(c.values(*statuses)), i, c) for i, c in enumerate(configs) if c.values(*statuses)]
            if scored:
                break
        else:
            return None
        pick = max if self.mode == "max" else min
        mean, _, config = pick(scored, key=lambda s: (s[0], -s[1] if self.mode == "max" else s[1]))  # ties: the first
        averaged = [v for v in config.seeds(*statuses) if v.best is not None]
        values = [v.best for v in averaged]
        first = config.trials[0]
        return {
            "config_key": config.key,
            "basis": basis,
            "mean": mean,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
            "method": first.method,
            "swept": first.swept,
            "seeds": sorted(v.seed for v in averaged if v.seed is not None),
            "trial_ids": [v.trial_id for v in averaged],
            "stopped": [(v.seed, v.epoch) for v in config.seeds(STOPPED_EARLY)],  # not averaged
            "running": len(config.seeds(*_ACTIVE)) if basis == "finished" else 0,
            "failed": len(config.seeds(ERROR)),
        }

    # -- text --------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        end = self._end if self._end is not None else self._clock()
        return 0.0 if self._start is None else end - self._start

    def _line(self, text: str, *, always: bool = False) -> None:
        """A plain event line; ``always``: printed in live mode too (above the view), for failures."""
        if always or not self.live:
            self.console.print(f"[{_fmt_duration(self._elapsed())}] {text}", markup=False, highlight=False, soft_wrap=True)

    def _describe(self, view: _TrialView) -> str:
        parts = [f"method={view.method}", *(f"{k}={v}" for k, v in view.swept.items())]
        if view.seed is not None:
            parts.append(f"seed={view.seed}")
        return " ".join(parts)

    @staticmethod
    def _epoch_text(view: _TrialView) -> str:
        return f"{view.epoch}/{view.max_epochs if view.max_epochs is not None else '?'}"

    def _overall_text(self) -> str:
        counts = self.counts()
        ended = sum(counts[s] for s in ENDED_STATUSES)
        total = self.total_trials if self.total_trials is not None else "?"
        done, planned = self.epochs()
        return f"trials {ended}/{total}, epochs {done}/{planned}, ETA {_fmt_duration(self.eta_s())}"

    def _best_text(self, title: str = "best so far", *, names: Mapping[str, str] | None = None) -> str:
        """The best configuration in one line; ``names``: the live view's short form (swept keys by their
        column headers, no config key), so that it fits a narrow terminal."""
        best = self.best()
        where = f"{self.metric}, {self.mode}, validation"
        if best is None:
            counts = self.counts()
            ended = [f"{counts[s]} {_word(s)}" for s in (STOPPED_EARLY, ERROR) if counts[s]]
            return f"{title} ({where}): none" + (f" — no trial finished its epochs ({', '.join(ended)})" if ended else "")
        spread = f" ± {best['std']:.4f}" if best["n"] > 1 else ""
        config = " ".join([f"method={best['method']}", *(f"{(names or {}).get(k, k)}={v}" for k, v in best["swept"].items())])
        seeds = ",".join(map(str, best["seeds"])) or "?"
        notes = []
        if best["basis"] == "running":
            notes.append("running, no configuration has finished yet")
        if best["stopped"]:
            stopped = ", ".join(f"seed {'?' if s is None else s} at epoch {e}" for s, e in best["stopped"])
            notes.append(f"stopped early, not averaged: {stopped}")
        if best["running"]:
            notes.append(f"{best['running']} still running")
        if best["failed"]:
            notes.append(f"{best['failed']} failed")
        extra = "".join(f"; {n}" for n in notes)
        key = "" if names is not None else f" [config {best['config_key']}]"
        return f"{title} ({where}): {best['mean']:.4f}{spread} (n={best['n']}, seeds {seeds}{extra}) {config}{key}"

    def summary_lines(self) -> list[str]:
        """The final summary: time, counts by status, the best configuration, every error."""
        counts = self.counts()
        done, planned = self.epochs()
        status = " · ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s] or s in ENDED_STATUSES)
        lines = [
            f"sweep finished in {_fmt_duration(self._elapsed())}: {sum(counts.values())} trials ({status}); "
            f"{done} epochs run",
            self._best_text("best configuration"),
        ]
        errors = [v for v in self._views.values() if v.status == ERROR]
        if errors:
            lines.append(f"errors ({len(errors)}):")
            lines += [f"  {v.trial_id} at epoch {v.epoch}: {v.error}" for v in errors]
        return lines

    # -- rich view ---------------------------------------------------------------------------------
    def _refresh(self, *, force: bool = False) -> None:
        if self._live_view is None:
            return
        now = self._clock()
        if not force and now - self._last_refresh < 1.0 / self.refresh_per_second:
            return
        self._last_refresh = now
        try:
            self._live_view.update(self.render(), refresh=True)
        except Exception as err:  # a display problem must never stop the sweep: fall back to lines
            self.close()
            self.live = False
            self._closed = False
            self._line(f"live view stopped ({type(err).__name__}: {err}); printing plain lines instead")

    def _shown(self, configs: list[_ConfigView], best_key: str | None) -> list[_ConfigView]:
        """At most ``max_rows`` configurations, in their order: the first (the baseline of a grid
        sweep), the best so far and those with running seeds, then the earliest of the rest."""
        if len(configs) <= self.max_rows:
            return configs
        first = [0, *(i for i, c in enumerate(configs) if c.key == best_key)]
        running = [i for i, c in enumerate(configs) if c.seeds(*_ACTIVE)]
        keep = list(dict.fromkeys([*first, *running, *range(len(configs))]))[: self.max_rows]
        return [configs[i] for i in sorted(keep)]

    @staticmethod
    def _seeds_cell(config: _ConfigView) -> Text:
        parts = [Text(f"{_symbol(s)}{n}", style=_STYLE.get(s, "")) for s in STATUSES
                 if (n := len(config.seeds(s)))]
        return Text(" ").join(parts)

    def render(self) -> Group:
        """The live view as one rich renderable."""
        counts = self.counts()
        ended = sum(counts[s] for s in ENDED_STATUSES)
        done, planned = self.epochs()
        total = self.total_trials if self.total_trials is not None else len(self._views) + counts[PENDING]
        elapsed = f"elapsed {_fmt_duration(self._elapsed())}"
        bars = Table.grid(padding=(0, 1))
        bars.add_row("trials", ProgressBar(total=max(total, 1), completed=ended, width=30), f"{ended}/{total}")
        if not self._views:  # Tune is up, its first actor is still starting (seconds, on a cold cluster)
            bars.add_row("epochs", Text("waiting for the first trial…", style="dim"), elapsed)
        else:
            bars.add_row("epochs", ProgressBar(total=max(planned, 1), completed=done, width=30),
                         f"{done}/{planned}  {elapsed}  ETA {_fmt_duration(self.eta_s())}")
        status = Text("  ").join(Text(f"{_symbol(s)} {_word(s)} {counts[s]}", style=_STYLE.get(s, ""))
                                 for s in STATUSES if counts[s] or s in _ALWAYS_COUNTED)

        configs = self._configs()
        if not configs:
            return Group(bars, status, Text(self._best_text()))
        best = self.best()
        best_key = best["config_key"] if best is not None and best["basis"] == "finished" else None
        stopped = any(c.seeds(STOPPED_EARLY) for c in configs)
        fixed = ["method", "seeds", "epochs", self.metric, *(["stopped"] if stopped else [])]
        names = short_names(self.swept, taken=fixed)
        # Two spaces between columns, none at the edges; a swept column is never narrower than its
        # header (the method's label gives way first).
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
        table.add_column("method", overflow="ellipsis")
        for key in self.swept:
            table.add_column(names[key], overflow="ellipsis", min_width=len(names[key]))
        table.add_column("seeds", no_wrap=True)
        table.add_column("epochs", justify="right", no_wrap=True)
        table.add_column(self.metric, justify="right", no_wrap=True)
        if stopped:
            table.add_column("stopped", justify="right", no_wrap=True)
        shown = self._shown(configs, best_key)
        for config in shown:
            view = config.trials[0]
            run = sum(v.epoch for v in config.trials)
            plan = sum(v.epoch if v.status in ENDED_STATUSES or v.max_epochs is None else v.max_epochs for v in config.trials)
            if finished := config.values(TERMINATED):
                metric = Text(_fmt_mean(finished), style="bold" if config.key == best_key else "")
            elif running := config.values(*_ACTIVE):
                metric = Text("~" + _fmt_mean(running), style="dim")
            else:
                metric = Text("-", style="dim")
            cells = [view.method, *view.swept.values(), self._seeds_cell(config), f"{run}/{plan}", metric]
            if stopped:
                values = config.values(STOPPED_EARLY)
                cells.append(Text(f"{statistics.fmean(values):.4f}" if values else "-", style=_STYLE[STOPPED_EARLY]))
            table.add_row(*cells)
        hidden = len(configs) - len(shown)
        if hidden > 0:
            table.caption = f"{hidden} more configuration(s) not shown"

        legend = [f"{names[k]} = {k}" for k in self.swept if names[k] != k]
        notes = [Text(" · ".join(legend), style="dim")] if legend else []
        rule = f"{self.metric} = best epoch, mean ± sd over finished seeds {_SYMBOL[TERMINATED]} (~ running so far)"
        if stopped:
            rule += f"; stopped seeds {_SYMBOL[STOPPED_EARLY]} apart, never averaged in"
        notes.append(Text(rule, style="dim"))
        return Group(bars, status, table, *notes, Text(self._best_text(names=names)))
