"""Test-session settings: one torch thread (the tiny test models run faster without intra-op threads on a
2-core CI machine, and results do not depend on the thread count)."""

import torch

torch.set_num_threads(1)
