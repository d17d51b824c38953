"""T5 (original T5 and T5.1.1) in Flax linen with T5X parameter names, soft prompts and the pure-function
model API."""

from promptjax.models.config import T5Config, get_config, preset_names
from promptjax.models.model import PromptableT5, shift_right
from promptjax.models.prompts import PromptConfig, export_prompt, init_prompt_params, load_prompt_file
from promptjax.models.t5 import Transformer
