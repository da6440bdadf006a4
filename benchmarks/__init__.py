"""Side-by-side benchmarks: sgdtune against the code people write without it.

Each figure is a ratio of two things measured in the same run, alternated over several
rounds (A B, B A, ...), reported as the median; the one absolute figure (start-up seconds)
comes with its bare-PyTorch floor beside it. `python -m benchmarks [--tiny] [--out PATH]`
prints a table and writes a JSON list of {group, name, value, target, op, unit, detail, ok}
(benchmarks/results.json by default); figures shown for context have target and ok null.
Torch runs on one intra-op thread unless --threads says otherwise (see __main__.py).

Groups, one module each:
  trainer    the trainer vs a minimal PyTorch loop; the noise probe's cost
  tracking   a study with MLflow tracking on vs off
  handwired  sgdtune vs Optuna + MLflowCallback + a DataLoader loop, on the same trials
  scale      10^6 x 64 synthetic examples: peak memory and time per epoch
  startup    command start to the first update, on an existing and on a new store
"""
