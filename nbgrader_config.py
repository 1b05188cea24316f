"""nbgrader configuration of the course.

The instructor notebooks in solutions/ are nbgrader's *source*; the learner notebooks in
lessons/ are its *release* (made by `make lessons`, never edited by hand).
"""

from pathlib import Path

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.root = str(Path(__file__).resolve().parent)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
c.CourseDirectory.course_id = "transformer-tantra"
# Exercise cells start from this stub; the checks report it as "not attempted yet".
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.Execute.timeout = 120
