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


def first_line(e: BaseException, limit: int = 300) -> str:
  """The first line of an exception's message (its type name when it has none), at most `limit` characters:
  what a one-line ``error:`` message quotes of a library's error."""
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:limit]
