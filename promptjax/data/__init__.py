"""Every batch feed side by side: seqio tasks → model batches (`feeds`), meta-batches (`meta_sampler`)."""

from promptjax.data.feeds import (FEATURES, VECTOR_FEATURES, DatasetConfig, dataset_batches, epoch_steps,
                                  model_batches)
