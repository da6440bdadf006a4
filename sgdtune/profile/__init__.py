"""Layer: profile. The device's hardware profile (`measure.py`), its words
(`words.py`) and its cache (`cache.py`); `python -m sgdtune.profile`
is `__main__.py` here."""
