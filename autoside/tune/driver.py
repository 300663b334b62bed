"""The driver side of a search: Ray connection, stores, the Tuner, resume reconciliation, the end of a search.

Called by :func:`autoside.tune.api.search`; kept apart so that module stays a readable overview.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoside.errors import ConfigError
from autoside.tune import tracking
from autoside.tune.dedup import canonical_float
from autoside.tune.journal import PARENT, Journal, log_op, now_ms
from autoside.tune.outbox import Outbox, store_record
from autoside.tune.results import RESULT_FILE, SearchResult, open_search, read_records
from autoside.tune.space import shaping_choices
from autoside.tune.trial import PENDING_KEY, RECORD_KEY, TrialContext, result_record, trial_id_of, write_json_atomic
from autoside.units import format_bytes

TRIAL_RETRIES = 1


def _check_reachable(address: str) -> None:
    """A ``host:port`` nobody listens on is one line at once (Ray itself retries for minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
            f"`ray start --head`, or leave --address out for a local cluster"
        ) from None


def connect_ray(address: str | None, runtime_env: dict[str, Any] | None = None) -> bool:
    """Connect to Ray; by default start a small local cluster bound to 127.0.0.1. True when this call started it.

    A loopback ``address`` (a cluster of nodes on this machine) keeps the driver on 127.0.0.1 too. ``runtime_env``
    is what every trial process gets, e.g. the working directory
    (:mod:`autoside.tune.workdir`)."""
    import ray

    if ray.is_initialized():
        return False
    from autoside.tune.loopback import is_loopback, pin_loopback

    quiet = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    local = address in (None, "", "local")
    if local or is_loopback(address):
        pin_loopback()  # otherwise Ray registers (and listens on) the machine's interface address
    if local:
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=os.cpu_count() or 1,
            object_store_memory=128 * 1024**2,
            runtime_env=runtime_env,
            **quiet,
        )
        from autoside.tune.reaper import watch_local_cluster

        watch_local_cluster()
    else:
        from autoside.tune.workdir import explain_upload_error

        _check_reachable(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, **quiet)
        except ConnectionError as exc:  # address="auto" with no cluster started on this machine
            raise ConfigError(f"--address {address}: no Ray cluster found ({str(exc).splitlines()[0]})") from None
        except ValueError as exc:
            clear = explain_upload_error(exc, (runtime_env or {}).get("working_dir", ""))
            if clear is None:
                raise
            raise clear from None
    return True


def check_tracking_reachable(tracking_uri: str) -> None:
    """With more than one Ray node, trials on other nodes must reach the MLflow store: a tracking server or a
    database server does; a SQLite file is refused (SQLite over a network file system corrupts); a file store (a
    folder) must be proven to be the same folder on every node (:mod:`autoside.tune.shared`)."""
    import ray

    from autoside.tune.shared import unshared_nodes

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    folder = tracking.file_store_folder(tracking_uri)
    if nodes <= 1 or (folder is None and not tracking_uri.startswith("sqlite:")):
        return  # one node, or a store every node reaches over the network (a tracking server, PostgreSQL, ...)
    server = (
        "start a tracking server (mlflow server --host HOST --port 5000 --backend-store-uri sqlite:///mlflow.db) "
        "and pass --tracking-uri http://HOST:5000"
    )
    if folder is None:
        raise ConfigError(
            f"--tracking-uri {tracking_uri}: the Ray cluster has {nodes} nodes, and trials on other nodes cannot write "
            f"to a local MLflow store; {server}"
        )
    missing = unshared_nodes(folder)
    if missing:
        raise ConfigError(
            f"--tracking-uri {tracking_uri}: the folder {folder} is not shared with Ray node(s) {', '.join(missing)} "
            f"(a file a task wrote there on that node did not appear here); mount it on every node, or {server}"
        )


@dataclass
class DriverState:
    path: Path
    meta: dict[str, Any]
    space: Any
    recipe: Any
    opts: Any
    study_name: str
    storage: Any
    context: TrialContext
    outbox: Outbox | None = None  # set by prepare; a state built for the searcher alone has none
    pending: list[Any] = field(default_factory=list)
    remaining: int = 0
    searcher: Any = None
    recovered: dict[str, int] = field(default_factory=dict)  # Tune trial id -> reruns after its worker died


def prepare(path: Path, meta: dict[str, Any], space: Any, recipe: Any, opts: Any, *, new: bool) -> DriverState:
    """Create (or reopen) the search folder, the MLflow parent run and the Optuna study; on resume, reconcile."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, device = trial_device(opts, recipe)  # a device the GPU request contradicts fails before anything
    root = Path(opts.root)
    made_root = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if new:
            (path / "trials").mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"--root {root}: cannot create the search folder there ({exc.strerror})") from None
    if new:
        params = {
            **tracking.flat(
                {
                    "budget": format_bytes(meta["budget_bytes"]),
                    "budget_bytes": meta["budget_bytes"],
                    "sampler": opts.sampler,
                    "scheduler": opts.scheduler,
                    "num_samples": opts.num_samples,
                    "max_concurrent": opts.max_concurrent,
                    "objectives": ",".join(opts.objectives),
                    "seed": opts.seed,
                }
            ),
            **{f"recipe.{k}": v for k, v in tracking.flat(meta["recipe"]).items()},
            **{f"space.{k}": v for k, v in tracking.flat(meta["space"]).items()},
        }
        tags = {
            **{f"version.{k}": v for k, v in tracking.versions().items()},
            **{f"hardware.{k}": v for k, v in tracking.hardware().items()},
            "autoside.role": "search",
        }
        try:
            experiment_id, parent = tracking.start_parent(
                meta["tracking_uri"],
                root,
                meta["name"],
                params=params,
                tags=tags,
                artifacts={"space.json": meta["space"], "recipe.json": meta["recipe"], "options.json": meta["options"]},
            )
        except Exception as exc:  # noqa: BLE001 - a store that is down or unusable at the start is the user's to fix
            from autoside.tune.journal import transient

            # Nothing of the search is kept: it never started.
            shutil.rmtree(path, ignore_errors=True)
            if made_root and not any(root.iterdir()):
                root.rmdir()
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            if not transient(exc):
                raise ConfigError(
                    f"--tracking-uri {meta['tracking_uri']}: MLflow cannot use this store ({first})"
                ) from None
            raise ConfigError(
                f"--tracking-uri {meta['tracking_uri']}: the MLflow store does not answer ({first}"
                f"); a search needs it at its start (later outages are waited out)"
            ) from None
        meta.update(experiment_id=experiment_id, parent_run_id=parent)
    outbox = Outbox(path, meta["tracking_uri"], meta["experiment_id"], meta["parent_run_id"])
    if not new:  # also sends what the previous driver could not
        outbox.search_ops([{"op": "reopen", "run": PARENT}])
    meta["status"] = "running"
    meta["attempts"] = int(meta.get("attempts", 0)) + 1
    write_meta(path, meta)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(path / 'optuna.db').resolve()}")
    context = TrialContext(
        name=meta["name"],
        space=meta["space"],
        recipe={**meta["recipe"], "device": device},
        budget_bytes=meta["budget_bytes"],
        tracking_uri=meta["tracking_uri"],
        experiment_id=meta["experiment_id"],
        parent_run_id=meta["parent_run_id"],
        threads=max(1, int(opts.cpus_per_trial)),
    )
    state = DriverState(
        path, meta, space, recipe, opts, study_name=meta["name"], storage=storage, context=context, outbox=outbox
    )
    if not new:
        _reconcile(state)
    finished = len(read_records(path))
    state.remaining = max(0, opts.num_samples - finished)
    return state


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(path / "search.json", meta)


def discard(path: Path, meta: dict[str, Any]) -> None:
    """Undo a new search that failed before its first trial: folder and MLflow parent run."""
    shutil.rmtree(path, ignore_errors=True)
    if meta.get("parent_run_id"):
        try:
            tracking.client(meta["tracking_uri"]).delete_run(meta["parent_run_id"])
        except Exception:  # noqa: BLE001 - best effort cleanup; the original error matters more
            pass


def _reconcile(state: DriverState) -> None:
    """After a driver died: tell Optuna trials that were recorded but never told; hand out again (same number)
    those that were running, after deleting their partial MLflow runs and folders."""
    import optuna

    study = optuna.load_study(study_name=state.study_name, storage=state.storage)
    searcher = _searcher(state, pending=[])
    running = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.RUNNING and "duplicate_of" not in t.user_attrs  # the ledger's
    ]
    rerun = []
    for frozen in running:
        result_file = state.path / "trials" / trial_id_of(frozen.number) / RESULT_FILE
        if result_file.is_file():
            record = json.loads(result_file.read_text())
            searcher.tell(optuna.trial.Trial(study, frozen._trial_id), record["status"], record.get("metrics") or {})
        else:
            rerun.append(frozen)
            shutil.rmtree(state.path / "trials" / trial_id_of(frozen.number), ignore_errors=True)
    if rerun:  # MLflow runs their killed attempts left (any started before now) go
        before, parent = now_ms(), state.meta["parent_run_id"]
        ops = [
            {"op": "delete_earlier", "run": None, "parent": parent, "number": t.number, "before": before} for t in rerun
        ]
        state.outbox.search_ops(ops)
    state.pending = rerun


def _searcher(state: DriverState, *, pending: list[Any], scheduler: Any = None, progress: Any = None):  # noqa: ANN202
    from autoside.tune.sampler import AutosideOptunaSearch, make_sampler

    opts = state.opts
    sampler = make_sampler(
        opts.sampler, seed=opts.seed, num_samples=opts.num_samples, space=state.space, told=_told(state)
    )

    def on_finish(number: int, status: str, last: dict[str, Any], params: dict[str, Any]) -> None:
        _record(state, number, status, last, params)

    return AutosideOptunaSearch(
        state.space,
        objectives=tuple(opts.objectives),
        sampler=sampler,
        storage=state.storage,
        study_name=state.study_name,
        budget_bytes=state.meta["budget_bytes"],
        pending=pending,
        scheduler=scheduler,
        on_finish=on_finish,
        on_told=progress.told if progress else None,
        on_duplicate=progress.duplicate if progress else None,
    )


def _told(state: DriverState) -> int:
    """Trials the study already holds (0 for a new search): a resumed search's sampler is seeded with it, so it does
    not start over from the proposals it made the first time."""
    import optuna

    try:
        return len(optuna.load_study(study_name=state.study_name, storage=state.storage).get_trials(deepcopy=False))
    except KeyError:  # no study yet
        return 0


def _record(state: DriverState, number: int, status: str, last: dict[str, Any], params: dict[str, Any]) -> None:
    """Write a finished trial's ``result.json``: the record it sent with its last result, or, for a trial its worker
    could not finish (pruned, crashed), one made here, its MLflow run closed (created if none is known)."""
    restarts = state.recovered.get(str(last.get("trial_id")), 0)
    if RECORD_KEY in last:
        record = json.loads(last[RECORD_KEY])
        record["restarts"] = max(int(record.get("restarts") or 0), restarts)
        record = store_record(state.path, record)
        if record.get(PENDING_KEY):
            state.outbox.trial_ops(record["trial_id"])
        return
    config = state.space.config_from_params(params).to_dict()
    metrics = {k: last[k] for k in ("val_accuracy", "peak_memory_bytes", "train_loss", "epoch") if k in last}
    reason = "stopped early by the scheduler" if status == "pruned" else "the trial's worker died"
    # What the worker had not sent when it reported last, then the run's end.
    journal = Journal(
        state.meta["tracking_uri"], state.meta["experiment_id"], ops=json.loads(last.get(PENDING_KEY, "[]"))
    )
    key = last.get("mlflow_run_key")
    if key:
        run = tracking.TrialRun(journal, key)
    else:
        run = tracking.TrialRun.start(
            journal,
            state.meta["parent_run_id"],
            number=number,
            trial_id=trial_id_of(number),
            search=state.meta["name"],
            params=params,
            config=config,
        )
    run.finish(status, None, tags={"reason": reason})
    record = result_record(
        number=number,
        params=params,
        config=config,
        status=status,
        metrics=metrics,
        mlflow_run_id=run.run_id,
        mlflow_run_key=run.key,
        reason=reason,
        finished_at=time.time(),
        restarts=restarts,
        **{PENDING_KEY: journal.pending},
    )
    if store_record(state.path, record).get(PENDING_KEY):
        state.outbox.trial_ops(record["trial_id"])


def run_tuner(state: DriverState) -> bool:
    """Run the remaining trials; returns True when interrupted (Ctrl-C)."""
    from ray import tune

    from autoside.tune.schedulers import make_scheduler, replay_records
    from autoside.tune.trial import run_search_trial

    opts = state.opts
    progress = Progress(state)
    if state.remaining == 0 and not state.pending:
        return False
    scheduler = make_scheduler(opts.scheduler, epochs=state.recipe.epochs, objectives=tuple(opts.objectives))
    replay_records(scheduler, read_records(state.path))  # a resumed search's rungs as its earlier drivers left them
    searcher = _searcher(state, pending=state.pending, scheduler=scheduler, progress=progress)
    state.searcher = searcher
    resources, extra = _resources(state)
    searcher.resources = extra
    searcher.limit = state.remaining
    # Trials run where their process starts (the shipped working directory on a cluster, see autoside.tune.workdir),
    # not in a Tune trial folder, so a recipe's relative paths mean what they mean to the driver. Tune passes this
    # variable on to every trial process.
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    trainable = tune.with_resources(tune.with_parameters(run_search_trial, context=state.context.to_dict()), resources)
    progress.start()
    _warm_cache(state, progress)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=2 * state.remaining,  # room for one requeue each; the searcher stops at state.remaining
            max_concurrent_trials=opts.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"attempt-{state.meta['attempts']}",
            storage_path=str((state.path / "ray").resolve()),
            verbose=0,
            callbacks=[progress.callback()],
            # A trial whose worker process or node dies runs again once (same trial number, its MLflow run
            # replaced); a trial that raises is recorded failed by itself and not retried.
            failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
        ),
    )
    try:
        tuner.fit()
    except KeyboardInterrupt:
        return True
    if searcher.finished_early:
        progress.print(f"no untried configuration of space {state.space.name!r} is left: the search ends early")
    return bool(getattr(tuner, "_interrupted", False)) or _still_running(state)


def _warm_cache(state: DriverState, progress: Progress) -> None:
    """Store the features trials will read on every node before the first trial (:mod:`autoside.tune.warm`)."""
    from autoside.tune.warm import may_read_cache, warm_cache

    if not may_read_cache(state.space, state.recipe):
        return
    cuda = state.context.recipe["device"] != "cpu"
    fixed = 0.0 if state.opts.gpus_per_trial == "auto" else float(state.opts.gpus_per_trial)
    done = warm_cache(
        state.context.recipe,
        state.context.space,
        threads=state.context.threads,
        gpus=(fixed or 1.0) if cuda else 0.0,
        max_concurrent=state.opts.max_concurrent,
    )
    for node in done:
        progress.print(
            f"feature cache on node {node['node'][:8]}: {node['built']} entries built, {node['taps']} features "
            f"per split ready in {node['seconds']:.1f} s"
        )
    state.meta["feature_cache_warm"] = done
    write_meta(state.path, state.meta)


def _still_running(state: DriverState) -> bool:
    finished = len(read_records(state.path))
    return (
        finished < state.opts.num_samples
        and state.searcher is not None
        and bool([t for t in state.searcher.study.get_trials(deepcopy=False) if t.state.name == "RUNNING"])
    )


def trial_device(opts: Any, recipe: Any) -> tuple[Any, str]:
    """GPUs per node the cluster can have, and the device trials run on (see :mod:`autoside.tune.resources`)."""
    from autoside.tune import resources as res

    config = res.autoscaler_config(opts.address, opts.cluster_config)
    inventory = res.cluster_gpus(gpus_per_node=opts.gpus_per_node, cluster_config=config)
    if opts.gpus_per_trial == "auto":
        gpus = 1.0 if inventory.gpus_per_node > 0 and recipe.device != "cpu" else 0.0
    else:
        gpus = float(opts.gpus_per_trial)
    return inventory, res.check_device(recipe.device, gpus, inventory)


def _resources(state: DriverState):  # noqa: ANN202
    """Resources per trial: ``cpus_per_trial`` CPUs, and on CUDA the GPU fraction (packed by predicted memory with
    ``--gpus-per-trial auto``, else fixed); the packer adds ``gpu_fraction``/``share_bytes`` to each config."""
    from ray import tune

    from autoside.tune import resources as res
    from autoside.units import parse_bytes

    opts = state.opts
    cuda = state.context.recipe["device"] != "cpu"
    fixed = 0.0 if opts.gpus_per_trial == "auto" else float(opts.gpus_per_trial)
    packer = None
    if cuda and opts.gpus_per_trial == "auto":
        memory = parse_bytes(opts.gpu_memory, field="--gpu-memory") or _gpu_total_memory()
        predict = res.CachedPredictor(state.recipe, state.space)
        packer = res.Packer(predict, gpu_memory_bytes=memory, budget_bytes=state.meta["budget_bytes"])

    def resources(config: dict[str, Any]):  # noqa: ANN202
        return tune.PlacementGroupFactory([res.bundle(opts.cpus_per_trial, config, fixed)])

    return resources, packer


def _gpu_total_memory() -> int:
    import ray

    @ray.remote(num_gpus=0.01)
    def probe() -> int:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)

    return ray.get(probe.remote())


class Progress:
    """Live progress on the terminal: a line per finished trial with the counts, best accuracy within the budget
    and the size of the front."""

    def __init__(self, state: DriverState) -> None:
        self.state = state
        self.running: set[str] = set()

    def start(self) -> None:
        s = self.state
        rerun = f", {len(s.pending)} interrupted trials run again" if s.pending else ""
        checkpointing = ", grad checkpointing" if s.meta.get("recipe", {}).get("grad_checkpointing") else ""
        self.print(
            f"search {s.meta['name']}: {s.remaining} trials to run{rerun}, budget "
            f"{format_bytes(s.meta['budget_bytes'])}, sampler {s.opts.sampler}, scheduler {s.opts.scheduler}, "
            f"at most {s.opts.max_concurrent} at a time{checkpointing}"
        )

    def print(self, line: str) -> None:
        if self.state.opts.progress:
            print(line, file=sys.stdout, flush=True)  # looked up per call: the Tuner pickles this object

    def callback(self):  # noqa: ANN201 - a ray.tune.Callback
        from ray.tune import Callback

        progress = self

        class _Callback(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN201
                progress.running.add(trial.trial_id)

            def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN201
                progress.running.discard(trial.trial_id)

            def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN201
                progress.running.discard(trial.trial_id)

            def on_trial_recover(self, iteration, trials, trial, **info):  # noqa: ANN001, ANN201
                # The worker (or its node) died and Tune runs the trial again: counted here, where it is known even
                # when the trial could not reach the tracking server to replace its earlier run.
                recovered = progress.state.recovered
                recovered[trial.trial_id] = recovered.get(trial.trial_id, 0) + 1

        return _Callback()

    def duplicate(self, number: int, original: int, params: dict[str, Any]) -> None:
        space = self.state.space
        unused = space.config_from_params(params).unused_knobs()
        choices = ", ".join(
            f"{k}={canonical_float(v) if isinstance(v, float) else v}"
            for k, v in shaping_choices(space.on_grid(params), unused).items()
        )
        self.print(
            f"      proposal {number} repeats trial {trial_id_of(original)} ({params.get('family')}"
            f"{': ' + choices if choices else ''}): not trained again, its result told to the sampler"
        )

    def told(self, number: int, status: str) -> None:
        from autoside.tune.pareto import feasible, pareto_front

        records = read_records(self.state.path)
        counts = {k: sum(r.status == k for r in records) for k in ("ok", "infeasible", "pruned", "failed")}
        budget = self.state.meta["budget_bytes"]
        pool = feasible(records, budget)
        best = max((r.accuracy for r in pool), default=None)
        front = pareto_front(records, tuple(self.state.opts.objectives), budget)
        record = next((r for r in records if r.number == number), None)
        what = ""
        if record is not None and record.metrics:
            acc = "-" if record.accuracy is None else f"{record.accuracy:.3f}"
            what = f" {record.config.get('family', '?')}: acc {acc}, mem {format_bytes(record.memory)}"
        best_text = f"{best:.3f}" if best is not None else "-"
        self.print(
            f"[{len(records):>3}/{self.state.opts.num_samples}] trial {trial_id_of(number)} {status}{what} | "
            f"done {counts['ok']} running {max(0, len(self.running) - 1)} infeasible {counts['infeasible']} "
            f"pruned {counts['pruned']} failed {counts['failed']} | best within budget {best_text} | "
            f"front {len(front)}"
        )


def _repeats(state: DriverState) -> dict[int, int]:
    """Trial number -> how many later proposals repeated its configuration (not trained; see autoside.tune.dedup)."""
    import optuna

    out: dict[int, int] = {}
    study = optuna.load_study(study_name=state.study_name, storage=state.storage)
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:
            out[int(t.user_attrs["duplicate_of"])] = out.get(int(t.user_attrs["duplicate_of"]), 0) + 1
    return out


def finalize(state: DriverState, *, interrupted: bool, seconds: float) -> SearchResult:
    """Tag the Pareto members, log pareto.csv / pareto.png / hypervolume to the parent run, close it. MLflow writes
    the tracking server cannot take are waited for a while, then left in the search folder for ``--resume``."""
    from autoside.tune.pareto import knee_point, normalised_reference, pareto_front, plot, search_hypervolume

    meta, path = state.meta, state.path
    state.outbox.wait()  # the trials' own writes first: the Pareto tags go on their runs
    result = open_search(meta["name"], root=state.opts.root)
    records, budget, objectives = result.trials, meta["budget_bytes"], tuple(state.opts.objectives)
    front = pareto_front(records, objectives, budget)
    knee = knee_point(front, objectives)
    front_ids = {r.trial_id for r in front}
    repeats = _repeats(state)
    ops: list[dict[str, Any]] = []
    for r in records:
        key = r.raw.get("mlflow_run_key")
        if r.mlflow_run_id or key:
            tags = {"pareto": str(r.trial_id in front_ids).lower()}
            if repeats.get(r.number):
                tags["autoside.proposed_again"] = str(repeats[r.number])
            ops.append({**log_op(key, tags=tags), "run_id": r.mlflow_run_id})
    _write_pareto_csv(path / "pareto.csv", front, knee)
    plot(records, front, path / "pareto.png", budget_bytes=budget, title=f"{meta['name']}: accuracy vs memory")
    ops += [{"op": "artifact", "run": PARENT, "file": name} for name in ("pareto.csv", "pareto.png")]
    # Hypervolume after each finished trial, in the order trials finished (a prefix never changes on resume), each
    # at the time its trial finished, so that sending it twice stores it once.
    ordered = sorted(records, key=lambda r: (r.raw.get("finished_at", 0), r.number))
    reference = normalised_reference(records, objectives, budget)
    logged = _logged_steps(meta, "hypervolume")
    for i in range(1, len(ordered) + 1):
        if i not in logged:
            hv = search_hypervolume(ordered[:i], objectives, budget, reference)
            stamp = int(float(ordered[i - 1].raw.get("finished_at", 0)) * 1000) or None
            ops.append(log_op(PARENT, metrics={"hypervolume": hv}, step=i, stamp=stamp))
    counts = result.counts()
    summary = {
        "hypervolume_final": search_hypervolume(records, objectives, budget, reference),
        "front_size": len(front),
        "trials": len(records),
        **{f"trials_{k}": v for k, v in counts.items()},
        "proposals_repeated": sum(repeats.values()),
    }
    ops.append(log_op(PARENT, metrics=summary))
    ops.append({"op": "terminate", "run": PARENT, "status": "KILLED" if interrupted else "FINISHED", "time": now_ms()})
    state.outbox.search_ops(ops)
    if not state.outbox.wait():
        left = state.outbox.pending()
        print(
            f"autoside: the MLflow tracking store ({meta['tracking_uri']}) did not answer; {left} writes are kept in "
            f"{path} and sent by `autoside search --resume {meta['name']} --root {state.opts.root}`",
            file=sys.stderr,
        )
    meta["mlflow_pending"] = state.outbox.pending()
    meta["status"] = "interrupted" if interrupted else "finished"
    meta["seconds"] = float(meta.get("seconds", 0.0)) + seconds
    write_meta(path, meta)
    return open_search(meta["name"], root=state.opts.root)


def _logged_steps(meta: dict[str, Any], metric: str) -> set[int]:
    """Steps of the parent run's ``metric`` already in MLflow (none known while the store is down)."""
    from autoside.tune.journal import transient

    c = tracking.client(meta["tracking_uri"])
    try:
        return {m.step for m in tracking.retry(lambda: c.get_metric_history(meta["parent_run_id"], metric), 3)}
    except Exception as exc:  # noqa: BLE001
        if not transient(exc):
            raise
        return set()


def _write_pareto_csv(file: Path, front: list[Any], knee: Any) -> None:
    with open(file, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "trial_id",
                "family",
                "val_accuracy",
                "test_accuracy",
                "peak_memory_bytes",
                "peak_memory",
                "trainable_params",
                "knee",
                "mlflow_run_id",
                "params",
            ]
        )
        for r in front:
            writer.writerow(
                [
                    r.trial_id,
                    r.config.get("family"),
                    r.accuracy,
                    r.metrics.get("test_accuracy"),
                    r.memory,
                    format_bytes(r.memory),
                    r.metrics.get("trainable_params"),
                    str(knee is r).lower(),
                    r.mlflow_run_id,
                    json.dumps(r.params),
                ]
            )
