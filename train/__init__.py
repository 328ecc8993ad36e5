"""train: a Flax NNX trainer for jaxloss with PyTorch-exact schedules and optimisers.

Run ``python -m train --help``. Modules: ``models``, ``losses``, ``metrics``, ``schedules``,
``optim``, ``data``, ``checkpoints``, ``config``, ``train_lib`` (the loop), ``plots``.
"""
