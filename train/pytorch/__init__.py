"""The PyTorch boundary: everything in the trainer that reads, writes or runs torch.

- `port`: torch state_dict <-> Flax NNX ResNet weights (torchvision and seed-004 layouts), and
  safe file reading (`weights_only=True`).
- `models`: the torch reference ResNets with the checkpoints' parameter names (imports torch).
- `verify`: `jaxloss-verify CHECKPOINT --model NAME`: torch and Flax logits from one file.
- `init_from`: `--init-from` (fine-tuning from a torch checkpoint) and `--export-torch`.

The JAX trainer imports this package only when one of those flags is given; torch itself is
imported only where a file is read or written or a torch model is run.
"""


class PortError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (the message lists why)."""
