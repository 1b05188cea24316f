"""Grading learner notebooks: the machinery behind `tantra check`, `tantra grade` and `tantra autograde`.

* ``sandbox``   — the kernel learner code runs in (own folder, scrubbed environment, memory limit,
  write guard; the launcher itself is ``_kernel.py``);
* ``execute``   — nbgrader's Execute preprocessor with per-cell and whole-notebook time limits,
  dead-kernel handling and output truncation;
* ``course``    — a cached nbgrader course per lesson, generated from ``solutions/`` (its gradebook
  holds the hidden tests that autograde restores);
* ``autograde`` — per-exercise results, grading one notebook, and a whole class in parallel workers;
* ``cli``       — the three commands (their arguments are parsed in ``tantra_lib/cli.py``).

nbgrader stays the grading engine (gradebook, hidden tests, checksums, feedback). Tested in
tests/test_grading.py, tests/test_grading_cli.py and tests/test_notebooks.py on the corpus of
tests/grading_corpus.py; benchmarked in bench/grading.py.
"""
