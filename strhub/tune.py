"""Hyperparameter sweeps with Ray Tune: the logic behind ``./tune.py``.

A sweep trains the composed config once per trial, with the values of ``tune.search_space`` drawn by a search
algorithm (Optuna's TPE sampler by default) and the worse trials stopped early by a scheduler (ASHA by default).
Each trial runs :func:`strhub.training.train` in one process on one device and reports the validation figures after
every validation. A crashed trial is recorded as failed and the sweep goes on; an interrupted sweep resumes.

Layout of a sweep directory::

    sweep_config.yaml   the composed config that was swept (with its tune section)
    trials.csv          one row per trial: status, values, figures of its last validation, error
    trials.md           the same as a markdown table, best first, with a summary
    trials.png          the metric against each swept number (log scale for log-distributed ones), one dot per trial
    best_config.yaml    the best trial's complete config: ./train.py --config-dir <sweep> --config-name best_config
    trials/             Ray's experiment (state, searcher); trials/<trial id>/ holds Ray's per-trial results and
                        checkpoint, and run/ with the trial's Lightning logs and checkpoints
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import ray
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, OmegaConf
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from strhub.models.loading import build_system
from strhub.tables import render_table
from strhub.training import build_datamodule, train

log = logging.getLogger(__name__)

REPORTED_METRICS = ('val_accuracy', 'val_NED', 'val_loss')
SWEEP_CONFIG = 'sweep_config.yaml'
BEST_CONFIG = 'best_config.yaml'
EXPERIMENT_NAME = 'trials'  # Ray's experiment directory inside the sweep directory (default storage)
CHECKPOINT_FILE = 'last.ckpt'  # the file inside a trial's Ray checkpoint
# Where ./train.py puts runs (as main.yaml's hydra.run.dir); written into best_config.yaml, which replaces main.yaml.
TRAIN_RUN_DIR = '${output_dir}/${model.name}/${now:%Y-%m-%d}_${now:%H-%M-%S}'

# Distribution type -> (Ray Tune constructor, its parameters in order).
DISTRIBUTIONS = {
    'loguniform': (tune.loguniform, ('low', 'high')),
    'uniform': (tune.uniform, ('low', 'high')),
    'quniform': (tune.quniform, ('low', 'high', 'q')),
    'randint': (tune.randint, ('low', 'high')),
    'lograndint': (tune.lograndint, ('low', 'high')),
    'choice': (tune.choice, ('values',)),
}
SCHEDULER_NAMES = ('asha', 'median', 'fifo')
ALGORITHM_NAMES = ('optuna', 'random')
UNFINISHED_STATES = ('PENDING', 'RUNNING', 'PAUSED')
_ABSENT = object()


# -- configuration ------------------------------------------------------------------------------------------------


def search_space_entries(space: Mapping[str, Any], prefix: str = '') -> dict[str, dict[str, Any]]:
    """``tune.search_space`` as ``{dotted config key: distribution spec}``.

    Keys may be nested (``{model: {lr: spec}}``, what Hydra overrides such as ``+tune.search_space.model.x=...``
    create) or dotted (``{model.lr: spec}``); a mapping with a ``type`` entry is a distribution spec.
    """
    entries: dict[str, dict[str, Any]] = {}
    for name, node in space.items():
        key = f'{prefix}{name}'
        if not isinstance(node, Mapping):
            raise ValueError(
                f'tune.search_space.{key} must be a distribution such as {{type: loguniform, low: 1e-4, high: 1e-2}}, '
                f'got {node!r}'
            )
        found = {key: dict(node)} if 'type' in node else search_space_entries(node, f'{key}.')
        for dotted in found:
            if dotted in entries:
                raise ValueError(f'tune.search_space gives {dotted} twice (nested and dotted); keep one')
        entries.update(found)
    return entries


def build_distribution(key: str, spec: Mapping[str, Any]) -> Any:
    """One search-space entry as a Ray Tune distribution; a ValueError names the entry and what is wrong."""
    kind = spec.get('type')
    if kind not in DISTRIBUTIONS:
        raise ValueError(f'tune.search_space.{key}: unknown type {kind!r}; valid types: {sorted(DISTRIBUTIONS)}')
    constructor, params = DISTRIBUTIONS[kind]
    missing = [p for p in params if spec.get(p) is None]
    unknown = sorted(set(spec) - {'type', *params})
    if missing or unknown:
        raise ValueError(
            f'tune.search_space.{key} ({kind}) needs exactly {list(params)}; missing {missing}, unknown {unknown}'
        )
    if kind == 'choice':
        values = spec['values']
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise ValueError(f'tune.search_space.{key}.values must be a non-empty list, got {values!r}')
        return constructor(list(values))
    low, high = spec['low'], spec['high']
    if not low < high:
        raise ValueError(f'tune.search_space.{key}: low must be below high, got low={low} high={high}')
    if kind.startswith('log') and low <= 0:
        raise ValueError(f'tune.search_space.{key}: a {kind} range must be positive, got low={low}')
    return constructor(*(spec[p] for p in params))


def build_search_space(cfg: DictConfig) -> dict[str, Any]:
    """``{dotted config key: Ray Tune distribution}`` for ``cfg.tune.search_space``; every key must name an
    existing config entry."""
    space = OmegaConf.to_container(cfg.tune.search_space, resolve=True) or {}
    entries = search_space_entries(space)
    if not entries:
        raise ValueError(
            'tune.search_space is empty: give at least one config key to search, e.g. '
            "+tune.search_space.model.lr='{type: loguniform, low: 1e-4, high: 1e-2}'"
        )
    for key in entries:
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ValueError(
                f'tune.search_space.{key}: there is no {key} in the config; search existing keys only (see the '
                'composed config: ./tune.py --cfg job)'
            )
    return {key: build_distribution(key, spec) for key, spec in entries.items()}


def resolve_mode(metric: str, mode: str) -> str:
    """``max`` or ``min`` for ``metric``; ``auto`` minimises val_loss and maximises the rest."""
    if metric not in REPORTED_METRICS:
        raise ValueError(f'tune.metric={metric!r} is not reported by the trials; valid: {list(REPORTED_METRICS)}')
    if mode == 'auto':
        return 'min' if metric == 'val_loss' else 'max'
    if mode not in ('max', 'min'):
        raise ValueError(f"tune.mode={mode!r}; valid: 'max', 'min', 'auto'")
    return mode


def check_sweep_config(cfg: DictConfig) -> None:
    """Raises a ValueError naming the setting and its fix when ``cfg`` cannot be swept (cheap: builds nothing)."""
    if 'tune' not in cfg:
        raise ValueError("the config has no tune section: compose it from config 'tune' (./tune.py does)")
    settings = cfg.tune
    build_search_space(cfg)
    resolve_mode(settings.metric, settings.mode)
    if settings.num_samples < 1:
        raise ValueError(f'tune.num_samples must be at least 1, got {settings.num_samples}')
    if settings.scheduler.name not in SCHEDULER_NAMES:
        raise ValueError(f'tune.scheduler.name={settings.scheduler.name!r}; valid: {list(SCHEDULER_NAMES)}')
    if settings.search.algorithm not in ALGORITHM_NAMES:
        raise ValueError(f'tune.search.algorithm={settings.search.algorithm!r}; valid: {list(ALGORITHM_NAMES)}')
    keys = set(search_space_entries(OmegaConf.to_container(settings.search_space, resolve=True)))
    for point in settings.search.points_to_evaluate or []:
        if set(point) != keys:
            raise ValueError(
                f'tune.search.points_to_evaluate: {dict(point)} must give exactly the search-space keys {sorted(keys)}'
            )
    resources = settings.resources_per_trial
    if not (isinstance(resources.cpu, int | float) and resources.cpu > 0):
        raise ValueError(f'tune.resources_per_trial.cpu must be a positive number, got {resources.cpu!r}')
    if resources.gpu != 'auto' and not (isinstance(resources.gpu, int | float) and resources.gpu >= 0):
        raise ValueError(f"tune.resources_per_trial.gpu must be 'auto' or a number >= 0, got {resources.gpu!r}")
    trainer = cfg.trainer
    strategy = trainer.get('strategy', 'auto')
    if trainer.devices != 1 or trainer.num_nodes != 1 or strategy not in (None, 'auto'):
        raise ValueError(
            f'tune runs every trial as one process on one device, but trainer has devices={trainer.devices}, '
            f'num_nodes={trainer.num_nodes}, strategy={strategy}: use trainer=auto, cpu or gpu (trainer.devices=1), '
            'and tune.resources_per_trial / tune.max_concurrent_trials to run trials side by side'
        )
    if trainer.limit_val_batches == 0:
        raise ValueError('trials are compared by their validation: trainer.limit_val_batches must not be 0')
    interval = trainer.val_check_interval
    if trainer.check_val_every_n_epoch is None and isinstance(interval, int) and 0 < trainer.max_steps < interval:
        log.warning(
            'trials validate only once, at the end (trainer.val_check_interval=%d steps > trainer.max_steps=%d), so '
            'the scheduler cannot stop the poor ones early; set trainer.val_check_interval to a fraction of the budget',
            interval,
            trainer.max_steps,
        )
    if cfg.ckpt_path:
        raise ValueError(
            'ckpt_path resumes one training run and cannot be swept; start trials from weights with pretrained='
        )


def preflight(cfg: DictConfig) -> None:
    """Builds the model and the data module once before any trial starts, so that a configuration error is
    reported here once rather than by every trial."""
    build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
    build_system(OmegaConf.to_container(cfg.model, resolve=True))


def apply_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """Sets each dotted key of ``values`` in ``cfg`` (in place) and returns ``cfg``."""
    for key, value in values.items():
        OmegaConf.update(cfg, key, value.item() if hasattr(value, 'item') else value, merge=False)
    return cfg


def experiment_path(cfg: DictConfig, sweep_dir: Path) -> str:
    """Where Ray keeps the sweep's experiment: ``<sweep dir>/trials``, or ``<tune.storage_path>/<sweep name>``."""
    storage = cfg.tune.storage_path
    if not storage:
        return str(sweep_dir / EXPERIMENT_NAME)
    if '://' not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return f'{storage.rstrip("/")}/{sweep_dir.name}'


def find_sweep(resume: bool | str, sweeps_dir: str | Path) -> Path:
    """The sweep directory that ``tune.resume`` names: the latest under ``sweeps_dir`` when ``true``."""
    if resume is True:
        sweeps = sorted(p for p in Path(sweeps_dir).glob('*') if (p / SWEEP_CONFIG).is_file())
        if not sweeps:
            raise FileNotFoundError(
                f'tune.resume=true: no sweep to resume under {sweeps_dir} (tune.sweeps_dir); compose the same model '
                'as the sweep (+experiment=...), or pass its directory: tune.resume=<sweep dir>'
            )
        return sweeps[-1]
    path = Path(str(resume)).expanduser()
    if not (path / SWEEP_CONFIG).is_file():
        raise FileNotFoundError(
            f'tune.resume={resume}: {path} is not a sweep directory (it has no {SWEEP_CONFIG}); pass the directory '
            'that tune.py printed when the sweep started, or tune.resume=true for the latest sweep'
        )
    return path


# -- inside a trial -----------------------------------------------------------------------------------------------


def training_ends(trainer: pl.Trainer) -> bool:
    """Whether the validation that just ran is the trial's last: a stand-alone one, or one at the end of fit."""
    if trainer.state.fn == TrainerFn.VALIDATING or trainer.should_stop:
        return True
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    return last_epoch and trainer.is_last_batch


class TuneReportCallback(pl.Callback):
    """Reports val_accuracy, val_NED and val_loss (as logged by the system) to Ray Tune after every validation,
    with the trial's latest checkpoint when ``checkpoint`` is set, and ``finished`` on the trial's last one (which
    tells a trial that ran its whole budget from one that the scheduler stopped)."""

    def __init__(self, checkpoint: bool = True) -> None:
        self.checkpoint = checkpoint
        self.finished = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in REPORTED_METRICS}
        self.finished = training_ends(trainer)
        metrics.update(step=trainer.global_step, epoch=trainer.current_epoch, finished=self.finished)
        if not self.checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(dir=trainer.default_root_dir) as tmp:
            trainer.save_checkpoint(Path(tmp) / CHECKPOINT_FILE, weights_only=False)  # full state: trials resume
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def use_assigned_devices(cfg: DictConfig) -> None:
    """Keeps a trial on the devices Ray gave it: ``accelerator=auto`` becomes ``cpu`` in a trial without a GPU
    (Ray leaves every GPU visible to such trials)."""
    if not ray.get_gpu_ids() and cfg.trainer.accelerator == 'auto':
        cfg.trainer.accelerator = 'cpu'


def run_trial(
    values: dict[str, Any], base_config: str, launch_dir: str, experiment_dir: str, checkpoint_trials: bool
) -> None:
    """One trial (Ray Tune function trainable): trains ``base_config`` with ``values`` set.

    Relative paths in the config mean what they meant where tune.py was started (``launch_dir``). Lightning writes
    to ``<experiment_dir>/<trial id>/run`` when that directory is reachable from this node, else to Ray's trial
    directory. A resumed trial continues from the checkpoint it last reported.
    """
    cfg = apply_values(OmegaConf.create(base_config), values)
    OmegaConf.update(cfg, 'trainer.enable_progress_bar', False, force_add=True)
    use_assigned_devices(cfg)
    if os.path.isdir(launch_dir):
        os.chdir(launch_dir)
    context = tune.get_context()
    if os.path.isdir(experiment_dir):
        run_dir = Path(experiment_dir) / context.get_trial_id() / 'run'
    else:
        run_dir = Path(context.get_trial_dir()) / 'run'
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restored = Path(checkpoint.to_directory(str(run_dir / 'resumed_from')))
        cfg.ckpt_path = str(restored / CHECKPOINT_FILE)
    report = TuneReportCallback(checkpoint_trials)
    system, trainer = train(cfg, run_dir, callbacks=[report])
    if not report.finished:
        # The budget ended between two validations: the trial is ranked by its final weights all the same.
        trainer.validate(system, datamodule=trainer.datamodule, verbose=False)


def trial_dirname(trial: Any) -> str:
    """A trial's directory is named by its id (run_trial finds its run directory by it)."""
    return trial.trial_id


# -- the sweep ----------------------------------------------------------------------------------------------------


def connect_ray(ray_cfg: Mapping[str, Any]) -> bool:
    """Starts a local Ray, or joins the cluster ``tune.ray.address`` names. Returns whether this call started the
    connection (then the caller shuts it down); an already initialised Ray is used as it is."""
    if ray.is_initialized():
        return False
    local = {
        'num_cpus': ray_cfg.get('num_cpus'),
        'num_gpus': ray_cfg.get('num_gpus'),
        '_temp_dir': ray_cfg.get('temp_dir'),
    }
    local = {k: v for k, v in local.items() if v is not None}
    runtime_env = ray_cfg.get('runtime_env')
    address = ray_cfg.get('address')
    if address:
        if local:
            names = ', '.join(f'tune.ray.{k.lstrip("_")}' for k in local)
            raise ValueError(
                f'{names} configure a local Ray, but tune.ray.address={address} joins a running cluster, which has '
                'its own resources and session directory: leave them null'
            )
        log.info('joining the Ray cluster at %s', address)
        ray.init(address=address, runtime_env=runtime_env)
    else:
        ray.init(include_dashboard=False, runtime_env=runtime_env, **local)
    return True


def trial_resources(resources: Mapping[str, Any]) -> dict[str, float]:
    """CPUs and GPUs reserved per trial; ``gpu: auto`` is one GPU where the cluster has any."""
    gpu = resources['gpu']
    if gpu == 'auto':
        gpu = 1 if ray.cluster_resources().get('GPU', 0) > 0 else 0
    return {'cpu': float(resources['cpu']), 'gpu': float(gpu)}


def build_scheduler(settings: DictConfig) -> TrialScheduler:
    """The early-stopping scheduler; its time unit is the validation (one report per validation)."""
    sched = settings.scheduler
    if sched.name == 'asha':
        return ASHAScheduler(
            time_attr='training_iteration',
            max_t=sched.max_t,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    if sched.name == 'median':
        return MedianStoppingRule(
            time_attr='training_iteration',
            grace_period=sched.grace_period,
            min_samples_required=sched.min_samples_required,
        )
    return FIFOScheduler()


def build_search_algorithm(settings: DictConfig) -> Searcher | BasicVariantGenerator:
    points = OmegaConf.to_container(settings.search.points_to_evaluate, resolve=True) or None
    if settings.search.algorithm == 'optuna':
        return OptunaSearch(points_to_evaluate=points, seed=settings.search.seed)
    return BasicVariantGenerator(points_to_evaluate=points, random_state=settings.search.seed)


@dataclass
class TrialRow:
    """One line of the trials table."""

    trial: str
    status: str  # completed, stopped (early, by the scheduler), failed, or unfinished (the sweep was interrupted)
    values: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    validations: int = 0
    step: int | None = None
    time_s: float | None = None
    error: str = ''
    path: str = ''


@dataclass
class SweepResult:
    sweep_dir: Path
    rows: list[TrialRow]  # best first, failed trials last
    best: TrialRow | None
    interrupted: bool


def _error_line(error: BaseException) -> str:
    """The last line of an error (Ray's wraps the trial's traceback): ``ValueError: unknown optimizer ...``."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def saved_trials(experiment: str) -> dict[str, Any]:
    """Trial id -> Ray's trial as the experiment's saved state has it. Its state (PENDING, RUNNING, TERMINATED,
    ERROR ...) is the one an interruption left, which ``tune.Tuner.restore`` continues from (the ResultGrid shows
    interrupted trials as terminated), and its config survives a restore even for a failed trial."""
    return {trial.trial_id: trial for trial in tune.ExperimentAnalysis(experiment).trials}


def trial_rows(
    grid: tune.ResultGrid, keys: Sequence[str], metric: str, mode: str, saved: Mapping[str, Any]
) -> list[TrialRow]:
    """The table rows of a sweep's trials, best first by ``metric`` (last validation), failed trials last."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial = Path(result.path).name
        config = result.config or (saved[trial].config if trial in saved else {})
        if result.error is not None:
            status = 'failed'
        elif trial in saved and saved[trial].status in UNFINISHED_STATES:
            status = 'unfinished'
        else:
            status = 'completed' if metrics.get('finished') else 'stopped'
        rows.append(
            TrialRow(
                trial=trial,
                status=status,
                values={k: config.get(k) for k in keys},
                metrics={k: float(metrics[k]) for k in REPORTED_METRICS if metrics.get(k) is not None},
                validations=int(metrics.get('training_iteration') or 0),
                step=metrics.get('step'),
                time_s=metrics.get('time_total_s'),
                error=_error_line(result.error) if result.error is not None else '',
                path=result.path,
            )
        )

    def order(row: TrialRow) -> tuple[bool, float, float]:
        value = row.metrics.get(metric, math.nan)
        if row.status == 'failed' or math.isnan(value):
            return True, 0.0, 0.0  # last
        # Ties (common in accuracy early in training) go to the lower validation loss.
        loss = row.metrics.get('val_loss', math.inf)
        return False, -value if mode == 'max' else value, math.inf if math.isnan(loss) else loss

    return sorted(rows, key=order)


def _format(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)


def write_tables(rows: Sequence[TrialRow], keys: Sequence[str], sweep_dir: Path, summary: str) -> None:
    """trials.csv (every value in full) and trials.md (rounded, with ``summary`` above)."""
    header = ['trial', 'status', *keys, *REPORTED_METRICS, 'validations', 'step', 'time_s', 'error', 'path']

    def cells(row: TrialRow) -> list[Any]:
        return [
            row.trial,
            row.status,
            *(row.values.get(k) for k in keys),
            *(row.metrics.get(k) for k in REPORTED_METRICS),
            row.validations,
            row.step,
            row.time_s,
            row.error,
            row.path,
        ]

    with open(sweep_dir / 'trials.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(header)
        writer.writerows([['' if c is None else c for c in cells(row)] for row in rows])
    # The paths are in the CSV only.
    table = render_table(header[:-1], [[_format(c) for c in cells(row)[:-1]] for row in rows])
    (sweep_dir / 'trials.md').write_text(f'{summary}\n\n{table}\n', encoding='utf-8')


def _log_scaled(search_space: Any, prefix: str = '') -> set[str]:
    """The dotted keys of the search space drawn on a log scale (loguniform, lograndint...)."""
    found: set[str] = set()
    for key, value in (search_space or {}).items():
        if isinstance(value, Mapping) and 'type' in value:
            if str(value['type']).startswith(('log', 'qlog')):
                found.add(prefix + key)
        elif isinstance(value, Mapping):
            found |= _log_scaled(value, f'{prefix}{key}.')
    return found


def plot_trials(rows: Sequence[TrialRow], keys: Sequence[str], metric: str, path: Path, log_keys: set[str]) -> None:
    """trials.png: ``metric`` of each trial's last validation against every numeric swept value (one panel each);
    failed trials and trials without the metric are left out. Nothing is written when no trial has the metric."""
    numeric = [k for k in keys if any(isinstance(r.values.get(k), int | float) for r in rows)]
    scored = [r for r in rows if not math.isnan(r.metrics.get(metric, math.nan))]
    if not numeric or not scored:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * len(numeric), 4))
    FigureCanvasAgg(figure)
    for i, key in enumerate(numeric, start=1):
        ax = figure.add_subplot(1, len(numeric), i)
        for status, colour in (('completed', '#2a6f97'), ('stopped', '#c8553d'), ('unfinished', '#999999')):
            points = [(r.values[key], r.metrics[metric]) for r in scored if r.status == status and key in r.values]
            if points:
                ax.scatter(*zip(*points), color=colour, label=status, s=25)
        if key in log_keys:
            ax.set_xscale('log')
        ax.set(xlabel=key, ylabel=f'{metric} (last validation)')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f'{len(scored)} trial(s) of {path.parent.name}', fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_best_config(cfg: DictConfig, best: TrialRow, path: Path, metric: str) -> None:
    """The sweep's config with the best trial's values: a complete primary config for ./train.py."""
    best_cfg = apply_values(OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)), best.values)
    best_cfg.pop('tune')
    best_cfg.hydra = {'run': {'dir': TRAIN_RUN_DIR}}
    header = (
        f'# The best trial ({best.trial}, {metric}={best.metrics.get(metric, math.nan):.4f}) of the sweep in '
        f'{path.parent}.\n# Train it (any override works, e.g. a longer budget):\n'
        f'#   ./train.py --config-dir {path.parent} --config-name {path.stem} trainer.max_epochs=20\n'
    )
    path.write_text(header + OmegaConf.to_yaml(best_cfg), encoding='utf-8')


def run_sweep(cfg: DictConfig, sweep_dir: str | Path, callbacks: Sequence[tune.Callback] = ()) -> SweepResult:
    """Runs (or, with ``tune.resume``, continues) the sweep ``cfg.tune`` describes; writes its tables and best
    config to the sweep directory.

    Args:
        cfg: a config composed from ``tune.yaml`` (``compose_config(overrides, config_name='tune')``).
        sweep_dir: the new sweep's directory (ignored when resuming: the resumed sweep's directory is used).
        callbacks: extra Ray Tune callbacks (loggers, ...).
    """
    if cfg.get('tune') is not None and cfg.tune.resume:
        sweep_dir = find_sweep(cfg.tune.resume, cfg.tune.sweeps_dir).resolve()
        ray_settings = cfg.tune.ray
        cfg = OmegaConf.load(sweep_dir / SWEEP_CONFIG)
        cfg.tune.ray = ray_settings
        log.info('resuming the sweep in %s with its own config', sweep_dir)
        resume = True
    else:
        sweep_dir = Path(sweep_dir).resolve()
        resume = False
    check_sweep_config(cfg)
    settings = cfg.tune
    space = build_search_space(cfg)
    keys = list(space)
    mode = resolve_mode(settings.metric, settings.mode)
    if not resume:
        preflight(cfg)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, sweep_dir / SWEEP_CONFIG)
    exp_path = experiment_path(cfg, sweep_dir)
    started = connect_ray(settings.ray)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                base_config=OmegaConf.to_yaml(cfg),
                launch_dir=os.getcwd(),
                experiment_dir=exp_path,
                checkpoint_trials=bool(settings.checkpoint_trials),
            ),
            trial_resources(settings.resources_per_trial),
        )
        if resume:
            if not tune.Tuner.can_restore(exp_path):
                raise FileNotFoundError(
                    f'cannot resume {sweep_dir}: Ray has no experiment state in {exp_path} (the sweep stopped before '
                    'its first trial started); start it again without tune.resume'
                )
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=settings.metric,
                    mode=mode,
                    search_alg=build_search_algorithm(settings),
                    scheduler=build_scheduler(settings),
                    num_samples=settings.num_samples,
                    max_concurrent_trials=settings.max_concurrent_trials,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=exp_path.rsplit('/', 1)[1],
                    storage_path=exp_path.rsplit('/', 1)[0],
                    failure_config=tune.FailureConfig(max_failures=settings.max_failures, fail_fast=False),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=list(callbacks),
                ),
            )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return summarise(cfg, sweep_dir, grid, saved_trials(exp_path), keys, mode)


def summarise(
    cfg: DictConfig,
    sweep_dir: Path,
    grid: tune.ResultGrid,
    saved: Mapping[str, Any],
    keys: Sequence[str],
    mode: str,
) -> SweepResult:
    """Writes the tables and the best config of a finished (or interrupted) sweep and logs the outcome."""
    metric = cfg.tune.metric
    rows = trial_rows(grid, keys, metric, mode, saved)
    interrupted = any(r.status == 'unfinished' for r in rows) or len(rows) < cfg.tune.num_samples
    candidates = [r for r in rows if r.status != 'failed' and not math.isnan(r.metrics.get(metric, math.nan))]
    best = candidates[0] if candidates else None
    counts = {s: sum(r.status == s for r in rows) for s in ('completed', 'stopped', 'failed', 'unfinished')}
    summary = (
        f'Sweep {sweep_dir}: {len(rows)} of {cfg.tune.num_samples} trials ({counts["completed"]} completed, '
        f'{counts["stopped"]} stopped early, {counts["failed"]} failed, {counts["unfinished"]} unfinished), '
        f'ranked by {metric} ({mode}).'
    )
    if best is not None:
        values = ', '.join(f'{k}={_format(v)}' for k, v in best.values.items())
        summary += f'\n\nBest: trial {best.trial} with {values}: {metric}={best.metrics[metric]:.4f}.'
        write_best_config(cfg, best, sweep_dir / BEST_CONFIG, metric)
    if interrupted:
        summary += f'\n\nThe sweep was interrupted; continue it with ./tune.py tune.resume={sweep_dir}'
    write_tables(rows, keys, sweep_dir, summary)
    plot_trials(rows, keys, metric, sweep_dir / 'trials.png', log_keys=_log_scaled(cfg.tune.search_space))
    log.info('%s\ntrials: %s', summary, sweep_dir / 'trials.md')
    if best is None and not interrupted:
        first_error = next((r.error for r in rows if r.error), 'no trial reported a validation')
        raise RuntimeError(
            f'no trial of the sweep in {sweep_dir} finished a validation (see {sweep_dir / "trials.md"}); '
            f'first error: {first_error}'
        )
    return SweepResult(sweep_dir, rows, best, interrupted)
