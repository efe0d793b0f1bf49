"""The dataset build on Ray Data: list → fetch/load/sample/render → embed → write Parquet shards.

``config`` (``BuildConfig``), ``run`` (``run_build``, the Ray Data pipeline), ``stages`` (its batch UDFs),
``plan`` (blocks and object-store budget), ``store`` (the build's files on a path or URI), the Parquet format
(``schema``, ``codec``, ``manifest``, ``failures``) and ``splits`` (the seeded held-out split of a build).
"""
