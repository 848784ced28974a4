"""Shared fixtures: a small digits set and session-wide base models (trained once, cached)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SPLITOPT_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see auto.py: spinning OpenMP threads stall other processes

from compress import data as datasets  # noqa: E402
from compress.base import base_model  # noqa: E402
from compress.train import Recipe  # noqa: E402

TINY = Recipe(epochs=2)  # what `--base-epochs 2` trains: enough for tests that need *a* trained model


@pytest.fixture(scope="session")
def digits32():
    return datasets.load("digits", input_size=32, seed=0)


@pytest.fixture(scope="session")
def resnet_base(digits32):
    """A quickly trained resnet18 on digits at 32 px (about 10 s the first time, then cached)."""
    return base_model("resnet18", digits32, seed=0, recipe=TINY, progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Exports trace and check on this 2-core machine; one torch thread avoids fighting other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_resnet18():
    """resnet18 as blocks with seeded random weights: what the runtime tests export."""
    import torch

    from compress import zoo

    torch.manual_seed(0)
    return zoo.build("resnet18", 10, 32).eval()


MYSQL_URL = os.environ.get("MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


@pytest.fixture(scope="session")
def mysql_url():
    """The real MySQL (MariaDB) server; CI requires it (SPLITOPT_REQUIRE_MYSQL), elsewhere its absence skips."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(MYSQL_URL)
        with engine.connect() as c:
            c.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001
        if os.environ.get("SPLITOPT_REQUIRE_MYSQL"):
            pytest.fail(f"MySQL required (SPLITOPT_REQUIRE_MYSQL) but unreachable at {MYSQL_URL}: {e}")
        pytest.skip(f"no MySQL server at {MYSQL_URL} (CI requires one): {e}")
    return MYSQL_URL
