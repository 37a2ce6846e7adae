import pytest
from supervision_helpers import Trees

pytest_plugins = ["roger_fixtures"]  # fixtures for tests that run real nodes


@pytest.fixture
def trees(tmp_path):
    """Starts supervision trees for a test; every process is gone when it ends."""
    t = Trees(tmp_path)
    yield t
    t.cleanup()
