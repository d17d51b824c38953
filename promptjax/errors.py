"""The errors a user can cause, in one place. Each message names the cause and the fix; the CLI prints any
`PromptjaxError` as one ``error:`` line and exits with status 2. Earlier checkpoints are always intact."""


class PromptjaxError(Exception):
  """Base of every user-facing error of promptjax."""


class DataError(PromptjaxError, ValueError):
  """Missing or malformed data: an unknown task, a missing data directory, a bad data configuration."""


class SamplerError(DataError):
  """A meta-batch sampler configuration that cannot run (meta-learning data)."""


class PartitioningError(PromptjaxError, ValueError):
  """A mesh or sharding that does not fit the devices or the model."""


class TrainingError(PromptjaxError, RuntimeError):
  """A run cannot go on (bad method configuration, mismatched checkpoint, NaN loss)."""


class MetaError(PromptjaxError, ValueError):
  """A meta-learning configuration that cannot run."""


class EvaluationError(PromptjaxError, RuntimeError):
  """An evaluation that cannot run (a task that is not rank-classifiable, a missing split)."""


class ExportError(PromptjaxError, ValueError):
  """A checkpoint or prompt that cannot be written in the asked-for format (or read back from it)."""
