"""``python -m distillab.cli``."""

from distillab.cli import main

main()
