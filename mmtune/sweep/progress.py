"""Live progress of a sweep: a rich view on a terminal, plain lines in logs (DESIGN §2).

On a terminal, :class:`SweepProgress` keeps one ``rich.live.Live`` view up to date: bars for trials
and epochs with an ETA, counts by status, a table of the running and most recent trials (method,
swept parameters, seed, epoch/max, the selection metric, its best so far, status) and the best
configuration so far; trial errors are also printed above the view. Elsewhere (CI, a log file) it
prints one plain line per trial event instead — start, an epoch line at most every
``line_interval_s`` per trial, completion / early stop / error — and a final summary.

The live view stops at Tune's ``on_experiment_end`` (which Tune also calls when the run fails or is
interrupted); ``close()`` or a ``with SweepProgress(...)`` block stops it if the driver dies first.

Selection follows DESIGN §4: the "best" is judged on a validation metric only, and a configuration
is scored by the mean over its seeds of each trial's best value so far. Per result the callback
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

_STYLE = {PENDING: "dim", RUNNING: "cyan", TERMINATED: "green", STOPPED_EARLY: "yellow", ERROR: "red"}
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
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


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
    changed: float = 0.0  # when the trial last reported (orders the "recent" rows)


class SweepProgress(tune.Callback):
    """A Tune callback that shows a sweep's progress on the driver.

    ``swept`` are the dotted config keys that vary in the sweep (``params.tau``, ``model.fusion``,
    ``method``); each becomes a column. ``live=None`` picks the rich view when ``console`` is a
    terminal and plain lines otherwise. ``line_interval_s`` spaces the plain per-epoch lines of one
    trial (0: a line for every epoch).
    """

    refresh_per_second = 2.0

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
        self.swept = [k for k in swept if k not in ("method", "seed")]  # always shown as their own columns
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
        view.status, view.error = RUNNING, None
        view.changed = view.last_line = time.monotonic()
        self._line(f"start    {view.trial_id}  {self._describe(view)}")
        self._refresh()

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self._views.get(trial.trial_id)
        if view is not None:
            view.status = RUNNING
            self._line(f"restore  {view.trial_id}  from epoch {view.epoch}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._ray_trials = trials
        view = self._views.get(trial.trial_id)
        if view is None:  # a callback that joined late (or a restored experiment)
            view = self._views[trial.trial_id] = self._new_view(trial)
        epoch, metrics = result_metrics(result)
        if epoch > view.epoch:
            self._epochs_done += epoch - view.epoch
        elif epoch < view.epoch:  # re-run after a restore from an earlier checkpoint
            self._epochs_done -= view.epoch - epoch
        view.epoch, view.status = epoch, RUNNING
        value = metrics.get(self.metric)
        view.value = value
        if value is not None and math.isfinite(value) and (view.best is None or self._better(value, view.best)):
            view.best, view.best_epoch = value, epoch
        now = view.changed = time.monotonic()
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
        self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._ray_trials = trials
        self._end = time.monotonic()
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
            self._start = time.monotonic()
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
        view.changed = time.monotonic()
        return view

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
        """Seconds left at the average epoch rate so far (all trials together), None before any epoch."""
        done, planned = self.epochs()
        if self._start is None or done <= 0:
            return None
        elapsed = (self._end or time.monotonic()) - self._start
        return (planned - done) * elapsed / done

    def best(self) -> dict[str, Any] | None:
        """The best configuration so far: per trial its best validation value, averaged over seeds."""
        groups: dict[str, list[_TrialView]] = {}
        for view in self._views.values():
            if view.status != ERROR and view.best is not None:
                groups.setdefault(view.config_key, []).append(view)
        if not groups:
            return None
        scored = []
        for key, views in groups.items():
            values = [v.best for v in views]
            scored.append((statistics.fmean(values), key, views))
        mean, key, views = (max if self.mode == "max" else min)(scored, key=lambda s: s[0])
        values = [v.best for v in views]
        return {
            "config_key": key,
            "mean": mean,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
            "method": views[0].method,
            "swept": views[0].swept,
            "seeds": sorted(v.seed for v in views if v.seed is not None),
            "trial_ids": [v.trial_id for v in views],
        }

    # -- text --------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return 0.0 if self._start is None else (self._end or time.monotonic()) - self._start

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

    def _best_text(self, title: str = "best so far") -> str:
        best = self.best()
        where = f"{self.metric}, {self.mode}, validation"
        if best is None:
            return f"{title} ({where}): none"
        spread = f" ± {best['std']:.4f}" if best["n"] > 1 else ""
        config = " ".join([f"method={best['method']}", *(f"{k}={v}" for k, v in best["swept"].items())])
        seeds = ",".join(map(str, best["seeds"])) or "?"
        return f"{title} ({where}): {best['mean']:.4f}{spread} (n={best['n']}, seeds {seeds}) {config} [config {best['config_key']}]"

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
        now = time.monotonic()
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

    def _rows(self) -> list[_TrialView]:
        running = [v for v in self._views.values() if v.status == RUNNING]
        others = sorted((v for v in self._views.values() if v.status != RUNNING), key=lambda v: v.changed, reverse=True)
        return (running + others)[: self.max_rows]

    def render(self) -> Group:
        """The live view as one rich renderable."""
        counts = self.counts()
        ended = sum(counts[s] for s in ENDED_STATUSES)
        done, planned = self.epochs()
        total = self.total_trials if self.total_trials is not None else len(self._views) + counts[PENDING]
        bars = Table.grid(padding=(0, 1))
        bars.add_row("trials", ProgressBar(total=max(total, 1), completed=ended, width=30), f"{ended}/{total}")
        bars.add_row(
            "epochs", ProgressBar(total=max(planned, 1), completed=done, width=30),
            f"{done}/{planned}  elapsed {_fmt_duration(self._elapsed())}  ETA {_fmt_duration(self.eta_s())}",
        )
        status = Text("  ").join(Text(f"{s} {counts[s]}", style=_STYLE.get(s, "")) for s in STATUSES if counts[s] or s != "PAUSED")

        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
        for name in ("trial", "method", *self.swept, "seed", "epoch"):
            table.add_column(name, justify="right" if name in ("seed", "epoch") else "left")
        table.add_column(self.metric, justify="right")
        table.add_column("best", justify="right")
        table.add_column("status")
        rows = self._rows()
        for v in rows:
            table.add_row(
                v.trial_id, v.method, *v.swept.values(), "-" if v.seed is None else str(v.seed), self._epoch_text(v),
                _fmt_metric(v.value), _fmt_metric(v.best), Text(v.status, style=_STYLE.get(v.status, "")),
            )
        hidden = len(self._views) - len(rows)
        if hidden > 0:
            table.caption = f"{hidden} more trial(s) not shown"
        return Group(bars, status, table, Text(self._best_text()))
