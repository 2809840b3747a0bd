import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tiny_models, shared by the tests
