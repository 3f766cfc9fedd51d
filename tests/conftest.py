"""Test-wide settings: one intra-op thread per test process.

The test models are tiny; on a 2-core machine PyTorch's thread pool costs more than it gains, and
``pytest -n 2`` (pytest-xdist) runs two test processes side by side instead.
"""

import torch

torch.set_num_threads(1)
