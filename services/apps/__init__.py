"""The command-line applications: ``hsd`` (cli), the launcher behind ``hsd run``,
``hsd compare``, ``hsd top`` and ``hsd verify``."""
