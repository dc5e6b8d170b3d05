"""Automated distillation: the constraints in, the chosen student out (``distillab auto``)."""
