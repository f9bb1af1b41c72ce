"""The testing kit for pipeline modules: fakes that pass the real collaborators' contract suites, fixtures, and
a check of ``@inject`` annotations.

- :class:`FakeJobStore`, :class:`FakeCostTracker`, :class:`FakeCache`, :class:`FakeStorage`: in memory, one
  process, the same answers and errors as JobRepository, CostTracker, RedisClient and the storage backends.
  The job store and the cost tracker share one :class:`FakeWorld`, as the real pair shares one database.
- ``fake_container``, ``real_container`` and ``fakes`` are pytest fixtures that need no conftest line: installing
  ``videogen-shared[testing]`` registers them (see :mod:`shared.testing.fixtures`); a conftest that also names
  ``pytest_plugins = ["shared.testing.fixtures"]`` still works (the fixtures load once).
- :func:`run_stage` runs a module's stage handler on the fakes under the worker's failure policy;
  :class:`FakeRateLimiter` lets ``ctx.paid`` admit there, :class:`FakeStageQueue` records submits.
- :func:`assert_injections` fails when an ``@inject`` parameter is annotated with a type its provider does
  not produce (``Provide[...]`` is ``Any`` to mypy, so mypy cannot).
"""

from shared.testing.cache import FakeCache
from shared.testing.costs import FakeCostTracker
from shared.testing.injections import InjectionProblem, assert_injections, check_injections
from shared.testing.jobs import FakeJobStore
from shared.testing.limiter import FakeRateLimiter
from shared.testing.stages import FakeStageQueue, StageRun, run_stage
from shared.testing.storage import FakeStorage
from shared.testing.world import FakeWorld

__all__ = [
    "FakeCache",
    "FakeCostTracker",
    "FakeJobStore",
    "FakeRateLimiter",
    "FakeStageQueue",
    "FakeStorage",
    "FakeWorld",
    "InjectionProblem",
    "StageRun",
    "assert_injections",
    "check_injections",
    "run_stage",
]
