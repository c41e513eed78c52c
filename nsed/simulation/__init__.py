"""``nsed simulate``: the protocol's mechanism measured on simulated agents of known competence.

A front end, like the server and the benchmark harness. The agents themselves are a
``ChatBackend`` one floor down (:mod:`nsed.agents.simulated`, the ``sim://`` URLs); this
package runs experiments on them:

* ``experiment``: the settings grid, the methods compared (nsed, compute-matched vote, single,
  round-1 aggregators), the accuracy curve with its fitted U(t), throughput, plots;
* ``server``: the simulated agents over a real OpenAI-compatible HTTP endpoint (load tests);
* ``cli``: the ``nsed simulate`` command.

The vote baseline is the benchmark harness's own (:mod:`nsed.benchmarks.methods`), so that
"vote" means the same thing in ``nsed simulate`` and ``nsed bench``.
"""
