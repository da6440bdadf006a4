"""Layer: search. The Optuna side of a study, without torch.

- `strategy.py`: the seeded sampler, the pruner (and the coverage rule on top of it), the
  study object, what counts as a finished trial.
- `search/space.py`: the experiment's search space as Optuna suggestions, and the stratified plan.
"""
