import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest
import torch

CHECKOUT = Path(__file__).resolve().parent.parent
_RUNS = CHECKOUT / "runs"  # train.out_dir's default, relative to the working directory


def _runs_entries() -> set[str]:
    return {p.name for p in _RUNS.iterdir()} if _RUNS.is_dir() else set()


def pytest_sessionstart(session):
    session.config._runs_before = _runs_entries()


def pytest_sessionfinish(session, exitstatus):
    """Fail the session if a test wrote a run directory into the checkout's ./runs."""
    new = sorted(_runs_entries() - getattr(session.config, "_runs_before", set()))
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"tests wrote into the checkout: {_RUNS}/{{{', '.join(new)}}}; every test must write under its "
               f"tmp_path (pass --out or train.out_dir)")
        if reporter is not None:
            reporter.write_line(f"ERROR: {msg}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True, scope="session")
def _index_cache(tmp_path_factory):
    """Image indexes are cached under a session temp dir, never in the user's ~/.cache (spawned
    processes inherit the variable)."""
    old = os.environ.get("SELFSUP_CACHE_DIR")
    os.environ["SELFSUP_CACHE_DIR"] = str(tmp_path_factory.mktemp("selfsup-cache"))
    yield
    if old is None:
        os.environ.pop("SELFSUP_CACHE_DIR", None)
    else:
        os.environ["SELFSUP_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own tmp_path, so that relative defaults (train.out_dir=runs) land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny models: thread wake-ups dominate them on a loaded
    2-core machine (one linear_probe_on_images run: 18 s with 2 threads, 0.2 s with 1). Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def float64():
    """float64 as the default dtype for a module of reference tests; restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
