"""Evaluation: zero-shot and few-shot on Ray Data, the held-out split during pretraining, galleries and queries.

``config`` (``EvalConfig``, ``EmbedConfig``), ``run`` (``run_evaluation``), ``sets`` (the official test sets and
our builds), ``heldout``, ``gallery`` (``jobs/embed.py``), ``query`` ("what is this mesh?", retrieval) and
``plots``.
"""
