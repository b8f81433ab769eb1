"""The actor role: prompts in, generated and verified groups out (``actor.py``)."""
