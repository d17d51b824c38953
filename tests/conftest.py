import os
import sys

# Make tests/reference_t5.py importable as `reference_t5` and keep JAX on the CPU in tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# 8 CPU devices for the sharding tests (jit still defaults to device 0 elsewhere).
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

SHARED_DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
