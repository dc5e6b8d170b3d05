"""Deployment: a run's student as a self-describing package (``package``) and its inference
server (``server``, copied into each package as ``serve.py``)."""
