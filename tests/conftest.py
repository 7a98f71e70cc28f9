from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture
def one_thread():
    """One torch thread: tiny tensors gain nothing from threads and lose a lot on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """Path of a small synthetic ISLES'22-layout cohort (12 cases at 6 mm, ~30^3 voxels, 1 lesion-free case).

    Read-only for tests: copy it (``shutil.copytree``) before deleting or corrupting files.
    """
    from dycon_monai.data import make_synthetic_cohort

    root = tmp_path_factory.mktemp("synthetic_cohort")
    return make_synthetic_cohort(root, cases=12, seed=0, spacing=6.0)


@pytest.fixture(scope="session")
def synthetic_la(tmp_path_factory):
    """Path of a small synthetic LA cohort in the preprocessed h5 layout (8 cases, 3 of them test, + split.json).

    Read-only for tests: copy it before changing files.
    """
    from dycon_monai.data import make_synthetic_la

    root = tmp_path_factory.mktemp("synthetic_la")
    return make_synthetic_la(root, cases=8, seed=0, shape=(64, 56, 32), n_test=3)
