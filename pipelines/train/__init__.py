"""Pretraining on Ray Train with DDP or DeepSpeed ZeRO.

``config`` (``TrainConfig`` and its resolution), ``recipes`` (named YAML recipes), ``driver`` (``run_pretrain``:
plan, resume, start Ray Train), ``loop`` (the worker loop and step), ``strategy`` (DDP and ZeRO engines),
``data`` and ``epochs`` (the build's rows dealt to the workers each epoch), ``batch`` (rows → a training batch)
and ``run_log`` (metrics written on the driver side).
"""
