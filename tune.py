#!/usr/bin/env python3
"""Ray Tune learning-rate sweeps (./tune.py tune.num_samples=20).

Not implemented yet: the sweep machinery is tracked as its own issue (Ray Tune + DDP). Until then, run
./train.py with different model.lr values.
"""

import sys

if __name__ == '__main__':
    sys.exit(
        'tune.py: learning-rate sweeps are not implemented yet (see the Ray Tune issue); use ./train.py model.lr=...'
    )
