"""Makes the suite's imports work however it is started.

The scenarios import the benchmark's shared modules (``procs``, ``backlog``, ``moto_s3`` …) from
``loadtests/`` by their plain names, as every script there does, and the fake upstreams of the
test suite from ``tests``. Importing this module puts ``loadtests/`` and the project root on
``sys.path`` (after this directory), once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
LOADTESTS: Final = HERE.parent
ROOT: Final = LOADTESTS.parent

for _path in (str(LOADTESTS), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(1, _path)
