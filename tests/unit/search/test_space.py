"""The search space (sgdtune/search/space.py): the stratified sampler's round-robin over the octaves
of B, and the sampler and pruner conditioned on B."""

import optuna
from conftest import EXPERIMENTS
from optuna.trial import TrialState


def test_the_stratified_sampler_cycles_octaves_and_leaves_the_rest_to_the_base_sampler():
    from sgdtune.config import ParamRange
    from sgdtune.search.space import StratifiedSampler, powers_of_two, suggest

    rng = ParamRange(low=8, high=1024, log=True, stratify=True)
    assert powers_of_two(rng) == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert powers_of_two(ParamRange(low=6, high=100, log=True)) == [8, 16, 32, 64]
    search = {"batch_size": rng, "lr": ParamRange(low=0.001, high=0.3, log=True)}
    study = optuna.create_study(sampler=StratifiedSampler(optuna.samplers.RandomSampler(seed=3), "batch_size",
                                                          powers_of_two(rng)))
    study.optimize(lambda t: suggest(t, search)["lr"], n_trials=20)
    assert [t.params["batch_size"] for t in study.trials] == [8, 16, 32, 64, 128, 256, 512, 1024] * 2 + [8, 16, 32,
                                                                                                          64]
    plain = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))  # the base sampler alone, lr only
    plain.optimize(lambda t: t.suggest_float("lr", 0.001, 0.3, log=True), n_trials=20)
    assert [t.params["lr"] for t in study.trials] == [t.params["lr"] for t in plain.trials]


def test_the_stratified_study_conditions_sampler_and_pruner_on_the_batch_size():
    from sgdtune.config import load_experiment
    from sgdtune.search.space import stratum_study
    from sgdtune.search.strategy import make_pruner, make_sampler

    config = load_experiment(EXPERIMENTS / "batch_tradeoff.toml")
    assert config.search["batch_size"].stratify
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config, 0), pruner=make_pruner(config))
    # trials 0-7 complete, one per B: val_acc after epoch 5 falls with B (fewer updates)
    for _ in range(8):
        trial = study.ask()
        b = suggest_b(trial)
        for epoch in range(1, 6):
            trial.report(1.0 - b / 2048 * epoch / 5, epoch)
        study.tell(trial, 1.0 - b / 2048)
    assert [t.params["batch_size"] for t in study.trials] == [8, 16, 32, 64, 128, 256, 512, 1024]
    view = stratum_study(study, "batch_size", 1024)  # a copy: its own trial numbers
    assert [(t.params["batch_size"], t.value) for t in view.trials] == [(1024, 0.5)]
    # trial 15 is at B = 1024: as good as the earlier B = 1024 trial, far below the median over all B
    for _ in range(8):
        trial = study.ask()
        b = suggest_b(trial)
        for epoch in range(1, 5):
            trial.report(1.0 - b / 2048 * epoch / 5, epoch)
        pruned = trial.should_prune()
        study.tell(trial, state=TrialState.PRUNED) if pruned else study.tell(trial, 1.0 - b / 2048)
    assert study.trials[15].params["batch_size"] == 1024 and study.trials[15].state == TrialState.COMPLETE
    assert optuna.pruners.MedianPruner(n_warmup_steps=3).prune(study, study.trials[15])  # a plain median would
    # the median within B = 1024 alone, without the spared first 2 complete trials (strategy.CoverFirst)
    from sgdtune.search.space import StratifiedPruner
    within = StratifiedPruner(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=3), "batch_size")
    assert not within.prune(study, study.trials[15])


def suggest_b(trial) -> int:
    from sgdtune.config import load_experiment
    from sgdtune.search.space import suggest

    return suggest(trial, load_experiment(EXPERIMENTS / "batch_tradeoff.toml").search)["batch_size"]
