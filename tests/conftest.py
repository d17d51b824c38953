import os
import sys

# Make tests/reference_t5.py importable as `reference_t5` and keep JAX on the CPU in tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
