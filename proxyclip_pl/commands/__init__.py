"""The command-line programs (console entry points ``proxyclip-*``; ``scripts/*.py`` run the same code).

* :mod:`.evaluate`: ``proxyclip-test`` / ``python scripts/test.py``: benchmark evaluation on any number of devices.
"""
