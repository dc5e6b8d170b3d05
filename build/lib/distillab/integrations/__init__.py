"""Entry points for other frameworks' training loops (transformers.Trainer)."""
