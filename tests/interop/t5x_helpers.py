"""Running promptjax's T5X gin files as T5X's scripts do, in this process (imported by the T5X tests only)."""

import contextlib
import os
import sys

import gin
import jax
import t5x
from t5x import gin_utils

import promptjax

CONFIG_DIR = os.path.join(os.path.dirname(promptjax.__file__), 'configs', 't5x')
T5X_SEARCH_PATH = os.path.dirname(os.path.dirname(t5x.__file__))  # where t5x.train finds t5x/configs/...


@contextlib.contextmanager
def parsed(files, bindings=(), script=None):
  """Parses `files` as t5x's scripts do; `script` ('train' / 'eval') stands in for the `__main__` their run
  files import. The gin config is cleared before and after."""
  main = sys.modules['__main__']
  # `promptjax` CLI tests in the same process add promptjax/configs to gin's search paths, where the same
  # relative names (models/t5_1_1_mini.gin, mtl_prompt.gin, runs/eval.gin) are promptjax's own files.
  prefixes = list(gin.config._LOCATION_PREFIXES)  # pylint: disable=protected-access
  gin.config._LOCATION_PREFIXES[:] = ['']  # pylint: disable=protected-access
  gin.clear_config()
  try:
    if script:
      module = sys.modules['__main__'] = __import__(f't5x.{script}', fromlist=['_'])
      # As the script's `main` does before parsing: its function made configurable, so the run files'
      # `train_script.train` bindings land on `t5x.train.train` (query them by that name), whichever test
      # of this process came first.
      gin.configurable(getattr(module, SCRIPT_FUNCTIONS.get(script, script)))
    gin_utils.parse_gin_flags([CONFIG_DIR, T5X_SEARCH_PATH], files, list(bindings), finalize_config=False)
    yield
  finally:
    sys.modules['__main__'] = main
    gin.clear_config()
    gin.config._LOCATION_PREFIXES[:] = prefixes  # pylint: disable=protected-access


SCRIPT_FUNCTIONS = {'eval': 'evaluate'}   # t5x.<script>'s function, where it is not named as the script


def run_script(script, files, bindings):
  """`python -m t5x.<script>` ('train', 'eval', 'infer') with promptjax's gin search path, in this process:
  the script's function made configurable and called as its `main` does. T5X's `train` switches JAX's
  default PRNG to 'unsafe_rbg' for the whole process when RANDOM_SEED is None (its default); the setting is
  restored afterwards, so later tests in this worker draw the usual threefry keys."""
  prng = jax.config.jax_default_prng_impl
  try:
    with parsed(files, bindings, script=script):
      return gin.get_configurable(f't5x.{script}.{SCRIPT_FUNCTIONS.get(script, script)}')()
  finally:
    jax.config.update('jax_default_prng_impl', prng)
