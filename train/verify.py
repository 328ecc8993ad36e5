"""`python -m train.verify`: the same command as `jaxloss-verify` (see `train.pytorch.verify`)."""

import sys

from train.pytorch.verify import main

if __name__ == "__main__":
    sys.exit(main())
