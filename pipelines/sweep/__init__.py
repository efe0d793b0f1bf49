"""Ray Tune sweeps of pretraining (the scale and initialisation ablations): ``space`` (what a sweep is),
``run`` (``run_sweep``) and ``report`` (the report folder, written while the sweep runs).
"""
