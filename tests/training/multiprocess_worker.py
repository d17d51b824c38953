"""One process of a multi-process training run on localhost (used by test_multiprocess.py).

usage: multiprocess_worker.py PROCESS_INDEX PROCESS_COUNT PORT MODEL_DIR OUT_JSON
Each process owns XLA_FLAGS' devices, feeds its slice of every global batch, and trains on a (4, 2) mesh.
"""

import json
import os
import sys

import jax

jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def main():
  index, count, port, model_dir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
  jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=count, process_id=index)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import common
  from promptjax.training import trainer
  from promptjax.training.method import MultiTask
  model, cfg, batches = common.setup()
  per = cfg.batch_size // count
  local = (b if count == 1 else {k: v[index * per:(index + 1) * per] for k, v in b.items()} for b in batches)
  result = trainer.train(model_dir=model_dir, model=model, method=MultiTask(cfg), total_steps=common.STEPS,
                         mesh_shape=(4, 2), batches=local, progress=False, async_checkpointing=False)
  if index == 0:
    with open(out, 'w') as f:
      json.dump({'devices': jax.device_count(), 'local_devices': jax.local_device_count(),
                 'losses': {str(k): v for k, v in result.losses.items()}}, f)


if __name__ == '__main__':
  main()
