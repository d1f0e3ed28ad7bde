"""Stage `tune`: quasi-random search over what still matters, on one machine or many.

    "Random over grid search. [...] Hyper-parameter optimization: there is a large number of fancy bayesian
    hyper-parameter optimization toolboxes around [...]." — Karpathy, A Recipe for Training Neural Networks, step 5.
    "It is very hard for an adaptive algorithm to beat a quasi-random search that has 2X its budget."
    — Deep Learning Tuning Playbook.

Search around the setup the earlier stages chose (a scrambled Sobol sequence by default), with N local worker
processes or workers on other machines sharing one Optuna storage; then read the study (space boundaries, budget,
seed noise, run length), look at it (axis and best-so-far plots, a trials table), ensemble the top trials, and
write the best configuration as a config the command line runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from recipe import checkpoint, playbook, plots
from recipe.check import Check, passed, skipped
from recipe.config import TrainSettings, require
from recipe.context import Context
from recipe.diagnostics.curves import loss_spikes
from recipe.diagnostics.search import enough_trials, search_space_boundary, training_length
from recipe.errors import ConfigError
from recipe.evaluation import constant_loss
from recipe.model_io import runnable_config, save_model
from recipe.rundir import write_atomic
from recipe.search_space import TRAIN_KEYS, default_space
from recipe.stage import Stage, StageSettings
from recipe.stages import top_trials
from recipe.stages.mistakes import look_at_mistakes
from recipe.stages.trials_table import fmt, trials_table
from recipe.study_storage import LEASES, STUDY, TRIALS, fence, sweep_stale
from recipe.tuning import (
    SAMPLERS,
    Search,
    Workers,
    configure,
    drawn,
    finished_trials,
    prepare,
    trial_fits,
    work,
    write_finished_rows,
)

STORAGE_URL = r"(postgresql|mysql|sqlite|oracle|mssql)(\+\w+)?://"  # the databases Optuna's RDBStorage reaches


@dataclass(frozen=True)
class TuneSettings(StageSettings):
    """Settings of the `tune` stage.

    Args:
        trials: trials to finish (a power of two suits the quasi-random sampler); a pruned or diverged trial is
            replaced by another, up to twice this many trials drawn in all.
        sampler: "sobol" (scrambled quasi-random, the default), "random", "tpe" or "grid".
        sampler_seed: the sampler's seed, shared by every worker; None uses the run's seed (which every trial
            trains with).
        space: hyperparameter -> {low, high, log, int} or {choices}; a name that is not a training setting is
            passed to the model factory. Empty: ranges centred on what the earlier stages found.
        epochs: epochs per trial; None uses train.epochs.
        max_steps: cap on the steps per trial.
        timeout: stop starting trials after this many seconds.
        pruning: "auto" (the median rule, only with a constant learning rate, where early epochs are comparable),
            "on" or "off".
        workers: local worker processes (this one included); more than one needs a run started from a config.
            Ctrl-C or SIGTERM stops them too (and they stop when this process dies); their trials are queued again.
        storage: an Optuna storage URL shared by workers on many machines; None for a journal file in run_dir/study/
            (kept when the run directory is reused, so running the search again resumes it).
        study: the study name; None derives it from the space, setup, sampler and seed.
        lease_timeout: seconds without a sign of life after which another worker takes over a running trial.
        seeds: re-trainings of the best configuration with other seeds (`seed_variance`); a best trial whose
            re-runs diverge or fall outside the runner-up's range is not handed on (the next of the top 3 is tried).
            The setup tune started from is re-trained with the same seeds, and the tuned setting is handed on only
            when it beats that setup beyond noise (`beats_incoming`).
        ensemble: top trials averaged into an ensemble.
        scientific: the hyperparameter under study (the playbook's scientific parameter, a name in the space); the
            others are nuisance parameters, searched anew at each of its values. Needs the sobol sampler.
        levels: values a numeric scientific parameter is studied at (spread over its range).
        distill: distil the ensemble into the handed-on setup's architecture (`distillation`); kept, as
            06_tune/distilled.pt (the model `load_model` returns), only when it beats that setup beyond seed noise.
        temperature: the distillation temperature (soft targets at T; Hinton et al. use 2 to 20).
    """

    trials: int = 16
    sampler: str = "sobol"
    sampler_seed: int | None = None
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs: int | None = None
    max_steps: int | None = None
    timeout: float | None = None
    pruning: str = "auto"
    workers: int = 1
    storage: str | None = None
    study: str | None = None
    lease_timeout: float = 30.0
    seeds: int = 3
    ensemble: int = 3
    scientific: str | None = None
    levels: int = 4
    distill: bool = True
    temperature: float = 2.0

    def __post_init__(self) -> None:
        require(self, "tune", counts=["trials", "workers", "epochs", "max_steps"], positive=["timeout"])
        require(self, "tune", positive=["lease_timeout", "temperature"])
        if self.levels < 2:
            raise ConfigError(f"tune.levels={self.levels}: a scientific parameter needs at least 2 values to compare.")
        if self.scientific is not None and self.sampler != "sobol":
            raise ConfigError(
                f"tune.scientific needs sampler sobol (it queues each nuisance configuration at every value of "
                f"{self.scientific!r}); got sampler {self.sampler!r}."
            )
        require(self, "tune", non_negative=["sampler_seed", "seeds", "ensemble"])
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"tune.sampler={self.sampler!r}: use one of {', '.join(SAMPLERS)}.")
        if self.pruning not in ("auto", "on", "off"):
            raise ConfigError(f"tune.pruning={self.pruning!r}: use auto, on or off.")
        if self.storage is not None and not re.match(STORAGE_URL, self.storage):
            scheme = self.storage.partition("://")[0] if "://" in self.storage else self.storage
            raise ConfigError(
                f"tune.storage: unknown storage scheme {scheme!r}; use a database URL (postgresql://, mysql://, "
                "sqlite:///path), or leave it out for a journal file in the run directory."
            )


class Tune(Stage):
    """Search hyperparameters around the chosen setup; judge the search; hand over the best configuration."""

    name = "tune"
    settings_cls = TuneSettings
    settings: TuneSettings

    def run(self, ctx: Context) -> list[Check]:
        search, start = self._search(ctx), time.perf_counter()
        self._run_workers(ctx, search)
        study, params, name = prepare(search, ctx.task)
        searched = time.perf_counter() - start  # the search check judges the study: its seconds are the trials'
        ctx.fits += trial_fits(study)
        finished = sorted(finished_trials(study), key=lambda t: t.value)
        if not finished:
            nothing = skipped("search", "no trial finished; see metrics.jsonl for the trials' runs.")
            return [nothing.replace(seconds=searched)]
        units = {p.name: [p.to_unit(t.params[p.name]) for t in finished] for p in params if not p.choices}
        summary = ctx.check(self._summary, ctx, study, finished, name, params, name="search")
        reruns: dict[int, top_trials.Reruns] = {}
        seeds = ctx.check(
            top_trials.seed_reruns, ctx, search, finished, self.settings.seeds, reruns, name="seed_variance"
        )
        held = seeds.value if seeds.status in ("pass", "warn") and seeds.value else {}
        best = next((t for t in finished if t.number == held.get("handed_on")), finished[0])
        noise = _loss_noise(finished[0], held.get("loss_std"))
        values, constant = [t.value for t in finished], constant_loss(ctx.task, ctx.task.targets("val"))
        checks = [
            summary.replace(seconds=(summary.seconds or 0.0) + searched),
            ctx.check(search_space_boundary, [t.params for t in finished], units, values, noise, constant),
        ]
        incoming = ctx.check(top_trials.against_incoming, ctx, search, held.get("handed_on"), reruns)
        kept = (incoming.value or {}).get("handed_on") == "incoming"  # the search found nothing better
        chosen, label = ({}, "the setup tune started from") if kept else (best.params, f"trial {best.number}")
        in_order = sorted(finished, key=lambda t: t.number)
        temperature = self.settings.temperature if self.settings.distill else None
        members: list[torch.nn.Module] = []  # the ensemble's, for distillation
        checks += [
            ctx.check(
                lambda: enough_trials([t.value for t in in_order], _loss_noise(best, held.get("loss_std"))),
                name="enough_trials",
            ),
            seeds,
            incoming,
            ctx.check(self._training_length, finished),
            ctx.check(top_trials.ensemble, ctx, search, finished, self.settings.ensemble, members),
        ]
        reference = reruns.get(top_trials.INCOMING if kept else best.number)

        def single() -> torch.nn.Module:  # the handed-on setup's model: a re-run of the incoming one, or the trial's
            model = reference.model if kept and reference is not None else None
            return model or top_trials.trained(ctx, search, best)

        checks += [
            ctx.check(
                lambda: top_trials.distil(ctx, search, chosen, single(), reference, members, temperature),
                name="distillation",
            ),
            ctx.check(lambda: look_at_mistakes(ctx, single(), label), name="prediction_errors"),
        ]
        with ctx.contained("search_figures", checks, "the trials table and axis plots"):
            checks[0] = checks[0].replace(artifacts=self._artifacts(ctx, study, finished, in_order, params))
        if seeds.status != "fail":
            with ctx.contained("best_config", checks, "handing the best trial's setup on, best_config.yaml"):
                self._hand_over(ctx, search, best, held, incoming.value if kept else None)
        return checks

    # ---- the search ---------------------------------------------------------------------------------------------

    def _search(self, ctx: Context) -> Search:
        s = self.settings
        pruning = s.pruning == "on" or (s.pruning == "auto" and ctx.train.schedule == "constant")
        space = s.space or default_space(ctx.task, ctx.train)
        if s.scientific is not None and s.scientific not in space:
            raise ConfigError(
                f"tune.scientific={s.scientific!r} is not searched; name one of the space's parameters "
                f"({', '.join(space)})."
            )
        return Search(
            base=dataclasses.asdict(ctx.train),
            space=space,
            trials=s.trials,
            sampler=s.sampler,
            epochs=s.epochs or ctx.train.epochs,
            max_steps=s.max_steps,
            seed=ctx.seed,
            sampler_seed=s.sampler_seed,
            pruning=pruning,
            storage=s.storage,
            study=s.study,
            run_dir=str(ctx.rundir.path),
            device=str(ctx.device),
            timeout=s.timeout,
            lease_timeout=s.lease_timeout,
            scientific=s.scientific,
            levels=s.levels,
        )

    def _run_workers(self, ctx: Context, search: Search) -> None:
        """This process and `workers - 1` more, each running trials until the study is done."""
        extra = self.settings.workers - 1
        if extra > 0 and not ctx.source.get("task"):
            raise ConfigError(
                "tune.workers > 1 starts worker processes that rebuild the task from a config: run with "
                "`recipe run CONFIG --workers N`, or start workers yourself on the same storage."
            )
        fence(Path(search.run_dir), search.lease_timeout)  # a killed run's workers stop before their rows are rewritten
        study, _, _ = prepare(search, ctx.task)  # queue the configurations once, before any worker starts
        write_finished_rows(ctx.rundir, study)
        spec = Path(search.run_dir) / STUDY / "worker.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        label_fix = ctx.learned.get("regularize", {}).get("label_fix")  # the split regularize kept
        worker = {"search": dataclasses.asdict(search), "source": ctx.source, "label_fix": label_fix}
        write_atomic(spec, json.dumps(worker, default=str).encode())
        workers = Workers(spec, extra)
        threads = torch.get_num_threads()
        if extra > 0:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (extra + 1)))
        try:
            with workers.passing_signals():
                work(search, ctx.task, ctx.rundir.metrics_log("tune", "trials"))
                workers.wait()
        except BaseException as exc:  # Ctrl-C, SIGTERM or an error: the workers stop too, their trials queued again
            workers.stop(signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
            if search.storage is None and workers.procs:
                sweep_stale(study, Path(search.run_dir) / LEASES, search.lease_timeout)  # those killed after the grace
            raise
        finally:
            torch.set_num_threads(threads)

    # ---- reading the study --------------------------------------------------------------------------------------

    def _summary(self, ctx: Context, study: Any, finished: list[Any], name: str, params: list[Any]) -> Check:
        best = finished[0]
        states: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        metric = ctx.task.metric_name
        value = {
            "study": name,
            "states": states,
            "best_trial": best.number,
            "best_val_loss": best.value,
            f"best_val_{metric}": best.user_attrs.get("val_metric"),
            "best_params": best.params,
        }
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in best.params.items())
        trials = study.get_trials(deepcopy=False)
        value["failed"] = drawn(trials) - len(finished) - states.get("pruned", 0)  # diverged, not interrupted
        studied = ""
        for p in (p for p in params if p.name == self.settings.scientific):
            iso = value["scientific"] = playbook.isolation(finished, p, True, self.settings.levels)
            k = min(range(len(iso["best"])), key=iso["best"].__getitem__)
            studied = (
                f" {p.name} under study: best at {fmt(iso['values'][k])} (validation loss {iso['best'][k]:.4g} ± "
                f"{iso['se'][k]:.2g}, nuisance parameters optimised over {iso['trials'][k]} trials; see isolation.png)."
            )
        return passed(
            "search",
            f"{len(finished)} trials finished, {states.get('pruned', 0)} pruned, {value['failed']} failed "
            f"({self.settings.sampler}); best #{best.number}: validation loss "
            f"{best.value:.4g}, {metric} {best.user_attrs.get('val_metric', float('nan')):.4g} with {shown}.{studied}",
            value,
        )

    def _training_length(self, finished: list[Any]) -> Check:
        """Where the best epochs fall, plus complexify's curve checks over every trial's training curve."""
        check = training_length([t.user_attrs.get("history", []) for t in finished])
        curves = {t.number: loss_spikes(t.user_attrs.get("step_losses", [])) for t in finished}
        unstable = sorted(n for n, c in curves.items() if c.status in ("warn", "fail"))
        if not unstable:
            return check
        note = (
            f" Trials {unstable[:8]} had unstable training curves (loss spikes or divergence): their values are noisy."
        )
        return check.replace(message=check.message + note, value={**(check.value or {}), "unstable_trials": unstable})

    # ---- what a person looks at, and the hand-over --------------------------------------------------------------

    def _artifacts(
        self, ctx: Context, study: Any, finished: list[Any], in_order: list[Any], params: list[Any]
    ) -> tuple[str | None, ...]:
        """The trials table (its last row: each parameter's importance), axis, best-so-far and isolation plots."""
        tables = trials_table(ctx, study, finished, in_order, [p.name for p in params])
        axes = {p.name: ([t.params[p.name] for t in finished], bool(p.log)) for p in params if not p.choices}
        studied = self.settings.scientific
        panels = {
            p.name: playbook.isolation(finished, p, p.name == studied, self.settings.levels)
            | {"log": p.log, "categorical": bool(p.choices), "studied": p.name == studied}
            for p in params
        }
        return (
            *tables,
            *(
                [ctx.save_figure("axes.png", lambda: plots.search_axes(axes, [t.value for t in finished]))]
                if axes
                else []
            ),
            ctx.save_figure("best_so_far.png", lambda: plots.best_so_far([t.value for t in in_order])),
            ctx.save_figure("isolation.png", lambda: plots.isolation(panels)),
        )

    def _hand_over(
        self, ctx: Context, search: Search, best: Any, held: dict[str, Any], incoming: dict[str, Any] | None
    ) -> None:
        """The setup that held up, as training settings for later stages and best_config.yaml (with the epochs its
        figures were measured at): the best trial's, with its re-runs' mean as its validation figure; or, when the
        search found nothing better (`incoming`, the `beats_incoming` value), the setup tune started from."""
        metric = ctx.task.metric_name
        params = {} if incoming else best.params
        settings, _ = configure(search.settings(), ctx.task, params)
        extra = {k: v for k, v in params.items() if k not in TRAIN_KEYS}  # searched model-factory arguments
        settings = dataclasses.replace(settings, epochs=search.epochs, model_args={**settings.model_args, **extra})
        if incoming:
            ran = incoming["incoming"]
            ctx.learn(kept_incoming=True, val_loss=ran["loss_mean"], **{f"val_{metric}": ran["mean"]})
            header = (
                f"# the search found nothing better than the setup it started from: validation loss "
                f"{ran['loss_mean']:.6g} over {len(ran['losses'])} seed re-runs against "
                f"{incoming['tuned']['loss_mean']:.6g} for trial #{best.number} (noise {incoming['noise']:.2g}); "
                "that setup is kept\n"
            )
        elif "loss_mean" in held:
            ctx.learn(train=_train_keys(settings, best.params), best_trial=best.number, val_loss=held["loss_mean"])
            ctx.learn(**{f"val_{metric}": held["mean"]})
            header = (
                f"# trial #{best.number} of the tune stage: validation loss {held['loss_mean']:.6g} ± "
                f"{held['loss_std']:.2g} over {len(held['attempts'][-1]['losses'])} seed re-runs (its own run: "
                f"{best.value:.6g})\n"
            )
        else:
            ctx.learn(train=_train_keys(settings, best.params), best_trial=best.number, val_loss=best.value)
            header = f"# best trial #{best.number} of the tune stage: validation loss {best.value:.6g}\n"
        steps = f", at most {search.max_steps} steps (tune.max_steps)" if search.max_steps else ""
        header += f"# measured with train.epochs = {search.epochs}{steps}, the epochs each trial trained for\n"
        if extra:
            header += f"# searched model-factory arguments, in train.model_args: {json.dumps(extra)}\n"
        config = runnable_config(ctx.source, settings, run_dir=str(ctx.rundir.path), seed=ctx.seed)
        if "task" not in config:
            header += "# add `task: module:function` to run this with `recipe run` or `recipe train`\n"
        ctx.save_text("best_config.yaml", header + yaml.safe_dump(config, sort_keys=False))
        source = Path(search.run_dir) / TRIALS / f"trial_{best.number}.pt"
        if not incoming and source.exists():  # the trial's weights with what rebuilds its model: recipe.load_model
            scored = {"loss": best.value, "metric": best.user_attrs.get("val_metric")}
            best_pt = f"{ctx.rundir.stage_dir('tune').name}/best.pt"
            save_model(ctx.rundir, best_pt, checkpoint.load(source), ctx.task, settings, scored, ctx.source, extra)


def _train_keys(settings: TrainSettings, params: dict[str, Any]) -> dict[str, Any]:
    """The training settings a trial's parameters change: its searched settings, and the model arguments."""
    changed = {k: v for k, v in params.items() if k in TRAIN_KEYS}
    return changed | ({"model_args": settings.model_args} if any(k not in TRAIN_KEYS for k in params) else {})


def _loss_noise(best: Any, metric_std: float | None) -> float | None:
    se = best.user_attrs.get("val_loss_se")
    return float(se) if se is not None else metric_std
