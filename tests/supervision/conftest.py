import pytest

from tests.supervision.support import Trees


@pytest.fixture
def trees(tmp_path):
    """Starts supervision trees for a test; every process is gone when it ends."""
    t = Trees(tmp_path)
    yield t
    t.cleanup()
