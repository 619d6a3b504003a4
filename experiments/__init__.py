"""The evidence experiment of issue 6 (does SpectrumKD improve every KD objective?), run by
``python experiments/run.py`` or ``python -m experiments.run``; see ``experiments/README.md``.

It stands on the library (``spectrumkd``) and only arranges its jobs; nothing in the library
imports it.
"""
