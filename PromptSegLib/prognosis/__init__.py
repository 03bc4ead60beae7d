"""Prognosis: clinical records as text prompts, a DeepHit head on a LoRA-tuned text encoder, C-index and the
model folder."""
