"""SpectrumKD: white-box knowledge distillation of LLMs with difficulty-spectrum data curation.

The pipeline, one package per stage::

    data -> scoring -> curation -> (distillation) -> (evaluation) -> (report)

Start with :func:`spectrumkd.scoring.score_examples` and :class:`spectrumkd.curation.SpectrumKD`.
"""

__version__ = "0.1.0"
