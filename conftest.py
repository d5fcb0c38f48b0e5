"""Test-session settings.

- One torch thread: the tiny test models run faster without intra-op threads on a 2-core CI machine.
- Every test, doctests included, starts from the same seeded global RNGs (torch, numpy, random), so a test's
  draws do not depend on which tests ran before it. ``ONEREC_TEST_SEED=N pytest`` runs the suite under another
  seed: a test that fails there leans on one lucky draw, and may break on another machine's float rounding.
"""

import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

TEST_SEED = int(os.environ.get("ONEREC_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _seeded_rngs() -> None:
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)
