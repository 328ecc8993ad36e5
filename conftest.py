"""Suite-wide test settings: deterministic hypothesis runs (CI must not flake)."""

import os

# One torch thread per test process: pytest -n 2 runs two processes on two cores, and torch's
# default (one thread per core each) oversubscribes them; a small parity comparison took 85 ms
# instead of 5.5 ms with two workers and the machine busy. Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import HealthCheck, settings

# derandomize: the same examples on every run. JAXLOSS_HYPOTHESIS_EXAMPLES raises the budget for a
# thorough local run (e.g. 1000); the default keeps the whole suite well inside CI's time.
settings.register_profile(
    "jaxloss",
    derandomize=True,
    deadline=None,
    max_examples=int(os.environ.get("JAXLOSS_HYPOTHESIS_EXAMPLES", "20")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("jaxloss")
