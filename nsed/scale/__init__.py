"""Front end: nsed beyond one machine, on Ray (the ``ray`` extra).

* :mod:`nsed.scale.bench`: ``nsed bench ... --ray ADDRESS|auto``. A driver checks the run
  and hands batches of problems to Ray actors; each actor keeps its own endpoint pool and team
  for the whole run and stores every result through the shared store, exactly as the
  single-process runner does (so resume, ``nsed runs`` and the reports are unchanged). Code
  grading runs as Ray tasks with ``num_cpus``, so it spreads over the cluster.
* :mod:`nsed.scale.serve`: ``nsed serve --ray ADDRESS|auto``: the server's plain ASGI app
  behind Ray Serve, several replicas, trace lookups from the shared store.
* :mod:`nsed.scale.cluster`: connecting to a cluster, with errors that say what to start.

Ray is imported only when one of these runs, so ``import nsed`` never needs it.
"""

from __future__ import annotations
