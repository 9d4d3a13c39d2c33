# The files in this directory are hostile programs (data for tests/test_sandbox.py), never tests to import.
collect_ignore_glob = ["*.py"]
