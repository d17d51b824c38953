"""Adapters that run promptjax models inside other frameworks (`promptjax.interop.t5x`: T5X). Import the
submodule explicitly; `import promptjax` does not load T5X."""
