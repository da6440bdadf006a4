"""Layer: pages. The interactive loss-surface explorer (`explorer.py`);
`python -m sgdtune.surface` is `__main__.py` here."""
