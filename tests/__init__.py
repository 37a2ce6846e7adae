"""The test suite: tests/roger/ for roger, tests/supervision/ for supervision.

These folders are packages so that pytest imports each test module under a
name of its own (``tests.roger.test_run`` can never clash with
``tests.supervision.test_run``) without putting tests/ on ``sys.path``, where
the folders roger/ and supervision/ would stand in the way of the packages
of those names.
"""
