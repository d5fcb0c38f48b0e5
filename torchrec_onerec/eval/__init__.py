"""Evaluation (docs/EVAL.md protocols A and B): ``metrics`` (per-user ranking and generation metrics),
``protocols`` (sessions -> protocol metrics, ``EvalResult``), ``generative`` (``evaluate_generative``: beam
search over a SampleSet) and ``baselines`` (the popularity floor). Import from the submodules; this package
stays import-light because ``torchrec_onerec.config`` reads ``eval.config``."""
