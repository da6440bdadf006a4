"""sgdtune against the hand-wired pattern, on the same trials.

The pattern, as in optuna-examples (pytorch_simple.py with the MLflow integration): an
objective that holds the whole loop, a torch DataLoader over a TensorDataset, one val
evaluation per epoch reported to the trial, and optuna_integration's MLflowCallback, which
logs each trial's params and final value as a run once the trial is over.

Same 20 trials on both sides: params drawn once from the default experiment's space
(batch size 8-1024 log, lr 0.001-0.3 log, epochs 5-30) and enqueued with
study.enqueue_trial; same data split (sgdtune.load_data, digits), same model and initial
weights (the trial seed sgdtune derives), same optimizer, no pruning. Each side gets a fresh
Optuna journal file and a fresh SQLite MLflow store, made before the clock starts. sgdtune's
time covers all of run_study (loading the data, the parent run); the pattern's only
study.optimize. sgdtune also logs every epoch's metrics, probes the gradient noise and
evaluates the training subset each epoch; the pattern logs one value per trial.

Beside them, the floor: the same trials' updates and one val evaluation per epoch in a bare
PyTorch loop (batches gathered by index from a randperm, no DataLoader, no Optuna, no MLflow),
as the trainer benchmark's minimal loop. No tool that makes the same updates runs below it,
so `floor / pattern` is the lowest `sgdtune / pattern` can be on these trials.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sgdtune.config import load_experiment
from sgdtune.data import load_data
from sgdtune.model import build_model
from sgdtune.search.strategy import derive_seed
from sgdtune.store.stores import locations, open_storage
from sgdtune.store.tracking import default_tracking_uri
from sgdtune.study.run import run_study

from .common import Check, median_ratio, timed

GROUP = "handwired"
EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "batch_tradeoff.toml"


def trial_params(n: int, max_epochs: int = 30, seed: int = 7) -> list[dict]:
    """n points of the default search space, log-uniform like the sampler's first trials."""
    rng = np.random.default_rng(seed)
    return [
        {
            "batch_size": int(round(float(np.exp(rng.uniform(np.log(8), np.log(1024)))))),
            "lr": float(np.exp(rng.uniform(np.log(1e-3), np.log(0.3)))),
            "epochs": int(rng.integers(5, max_epochs + 1)),
        }
        for _ in range(n)
    ]


def make_store(root: Path) -> str:
    from mlflow import MlflowClient

    uri = default_tracking_uri(root / "mlruns")
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the database
    return uri


def sgdtune_side(config, params: list[dict]) -> float:
    root = Path(tempfile.mkdtemp(prefix="sgdtune-bench-"))
    try:
        make_store(root)
        storage = open_storage(locations(config, root / "mlruns")[0])
        study = optuna.create_study(storage=storage, study_name=config.name, directions=config.directions)
        for p in params:
            study.enqueue_trial(p)
        return timed(lambda: run_study(config, track=True, mlruns=root / "mlruns"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def handwired_side(config, data, params: list[dict]) -> float:
    from optuna_integration.mlflow import MLflowCallback

    root = Path(tempfile.mkdtemp(prefix="sgdtune-bench-"))
    try:
        with warnings.catch_warnings():  # deprecated since optuna-integration 4.9, still the documented pattern
            warnings.simplefilter("ignore", FutureWarning)
            callback = MLflowCallback(tracking_uri=make_store(root), metric_name="val_acc")
        storage = open_storage(str(root / "optuna.journal"))
        study = optuna.create_study(storage=storage, study_name=config.name, direction="maximize",
                                    pruner=optuna.pruners.NopPruner())
        for p in params:
            study.enqueue_trial(p)

        def objective(trial: optuna.Trial) -> float:
            batch_size = trial.suggest_int("batch_size", 8, 1024, log=True)
            lr = trial.suggest_float("lr", 1e-3, 0.3, log=True)
            epochs = trial.suggest_int("epochs", 5, 30)
            seed = derive_seed(config.seed, trial.number)
            model = build_model(config.model, data.n_features, data.n_classes, seed)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.train.momentum)
            loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            accuracy = 0.0
            for epoch in range(epochs):
                model.train()
                for xb, yb in loader:
                    optimizer.zero_grad()
                    loss = F.cross_entropy(model(xb), yb)
                    loss.backward()
                    optimizer.step()
                model.eval()
                with torch.no_grad():
                    accuracy = (model(data.x_val).argmax(dim=1) == data.y_val).float().mean().item()
                trial.report(accuracy, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return accuracy

        return timed(lambda: study.optimize(objective, n_trials=len(params), callbacks=[callback]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bare_side(config, data, params: list[dict]) -> float:
    """The floor: the trials' updates and one val evaluation per epoch, nothing else."""
    x, y, n = data.x_train, data.y_train, data.n_train

    def train_all() -> None:
        for number, p in enumerate(params):
            seed = derive_seed(config.seed, number)
            model = build_model(config.model, data.n_features, data.n_classes, seed)
            optimizer = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=config.train.momentum)
            generator = torch.Generator().manual_seed(seed)
            for _ in range(p["epochs"]):
                model.train()
                order = torch.randperm(n, generator=generator)
                for start in range(0, n, p["batch_size"]):
                    batch = order[start:start + p["batch_size"]]
                    optimizer.zero_grad()
                    F.cross_entropy(model(x[batch]), y[batch]).backward()
                    optimizer.step()
                model.eval()
                with torch.no_grad():
                    (model(data.x_val).argmax(dim=1) == data.y_val).float().mean().item()

    return timed(train_all)


def run(tiny: bool = False) -> list[Check]:
    n_trials = 2 if tiny else 20
    rounds = 1 if tiny else 3
    params = trial_params(n_trials, max_epochs=5 if tiny else 30)
    config = load_experiment(EXPERIMENT, n_trials=n_trials, name="handwired", **{"pruner.name": "none"})
    data = load_data(config.data, config.seed)
    sides = {"ours": lambda: sgdtune_side(config, params), "theirs": lambda: handwired_side(config, data, params),
             "floor": lambda: bare_side(config, data, params)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):  # the three side by side in each round, each first in turn (common.paired, for three)
        for name in list(sides)[r % 3:] + list(sides)[:r % 3]:
            times[name].append(sides[name]())
    ours, theirs, floor = times["ours"], times["theirs"], times["floor"]
    epochs = sum(p["epochs"] for p in params)
    return [
        Check(GROUP, f"wall time sgdtune / Optuna + MLflowCallback + DataLoader, {n_trials} trials",
              median_ratio(ours, theirs), 0.8, "<=", "x",
              f"median of {rounds} rounds ({statistics.median(ours):.1f} s vs {statistics.median(theirs):.1f} s); "
              f"sgdtune also logs {epochs} epochs x 12 metrics, the pattern 1 value per trial"),
        Check(GROUP, f"the floor, a bare PyTorch loop of the same updates / the pattern, {n_trials} trials",
              median_ratio(floor, theirs), None, "", "x",
              f"median of {rounds} rounds ({statistics.median(floor):.1f} s); the lowest sgdtune / pattern can be"),
    ]
