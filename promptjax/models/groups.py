"""Trainable parameter groups of a `PromptableT5` and the papers' names for them, shared by training
(optimizer masks), checkpoints (what a run trained) and evaluation."""

from typing import Mapping, Tuple

# Top-level parameter subtrees (see `promptjax.models.model.PromptableT5`).
TRANSFORMER_KEYS: Tuple[str, ...] = ('token_embedder', 'encoder', 'decoder')
PROMPT_KEY = 'prompt'

# Trainable groups and the papers' names for them (Wu et al. 2022 §3):
# MTL-T✓P✓ trains both (the recommended recipe), MTL-T✓P✗ the transformer only (T0; a model with no
# prompt at all is also 'all'), MTL-T✗P✓ the prompt only (Gu et al.'s PPT; Qin et al.'s MPT and
# SUPMER's prompt also train only the prompt).
GROUPS: Tuple[str, ...] = ('all', 'transformer', 'prompt')
GROUP_ALIASES: Mapping[str, str] = {
    'T✓P✓': 'all', 'MTL-T✓P✓': 'all', 'mtl_prompt': 'all',
    'T✓P✗': 'transformer', 'MTL-T✓P✗': 'transformer', 't0': 'transformer',
    'T✗P✓': 'prompt', 'MTL-T✗P✓': 'prompt', 'ppt': 'prompt',
}


def canonical_group(trainable: str) -> str:
  """'all' | 'transformer' | 'prompt' for a group name or one of its aliases (`GROUP_ALIASES`)."""
  if isinstance(trainable, str):
    if trainable in GROUPS:
      return trainable
    if trainable in GROUP_ALIASES:
      return GROUP_ALIASES[trainable]
  aliases = ', '.join(f'{a!r} (= {g!r})' for a, g in GROUP_ALIASES.items())
  raise ValueError(f'Unknown trainable group {trainable!r}. Valid groups: '
                   f'{", ".join(map(repr, GROUPS))}; aliases: {aliases}.')
