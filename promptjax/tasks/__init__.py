"""seqio task and mixture registries: P3, CrossFit, self-supervised text, and the bundled mini benchmark.

Importing this package registers every task and mixture (the T5X ``MIXTURE_OR_TASK_MODULE``
convention); nothing is read until a dataset is requested. See `config` for where data comes from.
"""

from promptjax.tasks.config import (DataError, configure_data, get_data_dir, get_vocabulary, get_vocabulary_path,
                                    output_features, set_data_dir, set_vocabulary_path)
from promptjax.tasks import p3

p3._register_real_p3()
from promptjax.tasks import crossfit, self_supervised
from promptjax.tasks import mini
