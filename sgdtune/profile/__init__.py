"""Layer: profile. The device's hardware profile (`measure.py`); `python -m sgdtune.profile`
is `__main__.py` here."""
