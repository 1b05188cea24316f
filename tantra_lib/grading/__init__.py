"""Grading learner notebooks: the machinery behind `tantra check`, `tantra grade` and `tantra autograde`.

* ``sandbox``   — the kernel learner code runs in (own folder, scrubbed environment, limits);
* ``execute``   — nbgrader's Execute preprocessor with time, output and dead-kernel handling;
* ``course``    — a cached nbgrader course per lesson, generated from ``solutions/`` (hidden tests);
* ``results``   — per-exercise results (score, max, feedback) from an executed notebook;
* ``autograde`` — grading one notebook or a whole class, in parallel workers;
* ``cli``       — the three commands.

nbgrader stays the grading engine (gradebook, hidden tests, checksums, feedback).
"""
