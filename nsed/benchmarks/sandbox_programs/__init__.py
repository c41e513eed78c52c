"""The programs the sandbox runs inside each box, kept as real, linted and tested modules.

:mod:`nsed.benchmarks.sandbox` reads them with :mod:`importlib.resources` and copies them
into every box, where they run under ``python -I -S`` and import only the standard library:

* ``launcher``: prepares the box (mounts, network), starts the program under rlimits and
  reports how it ended on a status pipe;
* ``runner``: the program's interpreter, with LiveCodeBench's import prelude, in script or
  function-call mode.

nsed itself never imports them; tests import their pure helpers.
"""

PROGRAMS: tuple[str, ...] = ("launcher.py", "runner.py")
