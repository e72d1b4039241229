"""What a test does when something it needs is missing from the machine.

On a developer's laptop it skips, with the reason. Under CI (``CI`` set, as every CI service
does) it fails: a run without RabbitMQ or network namespaces must not look green.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a missing dependency fails the run)", pytrace=False)
    pytest.skip(reason)
