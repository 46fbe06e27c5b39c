import os
import sys

# Tests import the packages and run the tools from the repository root, as a user does.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
