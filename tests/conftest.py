import os
import sys

import pytest

# Tests import the packages and run the tools from the repository root, as a user does.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
# The CPU precision and layer paths by their fixed rule, in this process and every one it starts: a
# test's result must not depend on how busy the machine was when a choice was measured
# (tests/test_cpu_choice.py measures, in a cache folder of its own).
os.environ["FACE_CPU_CHOICES"] = "rule"


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the test machines have two shared cores, where a second
    thread costs more than it gains."""
    import torch  # only for the tests that ask for it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
