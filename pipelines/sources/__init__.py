"""Sources: where shapes come from. A source lists shapes (``ShapeRef``) and materialises one (``ShapeData``).

``dispatch`` picks the source of a ``SourceConfig`` (``config``): ``procedural`` (the offline default),
``local`` (a folder of meshes), ``objaverse`` (downloads through ``download``) and ``openshape`` (OpenShape's
released files). No Ray here; the build (``pipelines.build``) streams the listing through its workers.
"""
