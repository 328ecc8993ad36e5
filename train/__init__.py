"""train: a Flax NNX trainer for jaxloss with PyTorch-exact schedules and optimisers.

Run ``jaxloss-train --help`` (or ``python -m train``). The layout:

- ``cli`` (flags -> ``config.Config``) and ``presets``; ``names``: every registry's names, once.
- ``loop``: the epoch loop: how a run starts (resume, init-from, fresh), checkpoint policy,
  early stopping; ``workdir``: the run directory's lock, files and resume contract;
  ``checkpoints``: orbax managers with verified digests.
- ``step``: ``TrainState``, ``create_train_state``, the jitted ``train_step`` / ``eval_step``.
- ``models``, ``losses``, ``metrics``, ``optim``, ``schedules`` (+ ``plateau``), ``data``
  (TFDS, ImageFolder, grain), ``plots``, ``runtime`` (glibc malloc tuning for XLA:CPU).
- ``pytorch``: the torch boundary (weight port, torch reference models, verify, init-from).
"""
