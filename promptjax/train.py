"""``python -m promptjax.train --gin_file=... --gin.MODEL_DIR=...``: the T5X-style training entry point."""

import sys

from promptjax.cli import train_main

if __name__ == '__main__':
  sys.exit(train_main())
