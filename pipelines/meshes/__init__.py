"""Meshes: a file → ``Mesh`` (safely), and a ``Mesh`` → coloured surface points and rendered views.

``mesh`` (the in-memory mesh), ``load`` (GLB/glTF, OBJ+MTL, PLY, STL, OFF), ``guard`` (limits for untrusted files),
``off_format``, ``sampling`` (area-weighted points), ``cameras`` (the views' poses and intrinsics) and ``render``
(the offscreen GL renderer). No Ray here; the build (``pipelines.build``) runs these inside its workers.
"""
