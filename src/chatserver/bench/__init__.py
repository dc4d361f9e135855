"""A benchmark of chatserver: ``python -m chatserver.bench``.

One command starts our server in its own process (``python -m chatserver`` on
an ephemeral loopback port, afresh for each scenario, with the bench's memory
storage holding the scenario's users and groups), drives it from one or more
load-generator processes (``--generators N``), prints a table (``--json``:
the same figures as JSON) and always stops the server it started::

    python -m chatserver.bench                     # every scenario, about a minute
    python -m chatserver.bench --quick             # smaller loads, about 15 s
    python -m chatserver.bench --scenario direct --users 1000
    python -m chatserver.bench --compare ws://127.0.0.1:8080 --compare-pid 4242
    python -m chatserver.bench --rounds 3 --compare-command 'seed=node run.js --port {port}'

Scenarios:

- ``direct``: 100, 1,000 and 10,000 connected, authorized users; a closed
  loop in which ``--senders`` clients each keep ``--inflight`` requests
  outstanding, every message going to a random other user, until
  ``--messages`` are sent or ``--duration`` seconds have passed.
- ``group``: the same, each message to the sender's group of
  ``--group-size`` (every member connected); every push is counted.
- ``open``: direct messages at a fixed ``--rate`` (2,000/s, 1,000 users) for
  latency: reply (send → ack) and delivery (send → the recipient's push).
- ``storm``: ``--storm-clients`` (5,000) connect and authorize in bursts of
  ``--burst`` (100); a burst starts once the previous one is authorized,
  and the figure is the time until all are.

Figures: messages/s and pushes/s; reply and delivery latency (p50/p99/max,
from ``time.perf_counter_ns`` stamps carried in each message); the server's
CPU time per message and per push (utime + stime from ``/proc/PID/stat``,
read just before and after the measured window, in clock ticks of
1/``SC_CLK_TCK`` s, 10 ms on Linux: so a window should last seconds); its RSS
(``VmRSS``) and the RSS per idle authorized connection (the RSS delta from a
freshly started server to one holding N authorized idle clients, each reading
taken after a full garbage collection in the server and once the RSS has
stopped moving); the server's garbage collections during the window; and the
connection storm's time.

Is the load generator the bottleneck? The table gives its own CPU time per
message (``gen µs/msg``) and how busy each generator process was (``gen
CPU``, in the measured window, as a share of one core). If ``gen CPU`` is
near 100% while ``srv CPU`` is well below it, the generator set the pace:
add ``--generators 2`` (on a machine with cores to spare) or lower
``--inflight``. The per-message server CPU stays meaningful either way, since
it is CPU divided by work done; throughput and latency do not. On a 2-core
machine server and generator share the cores: ``srv CPU`` near 100% with
``gen CPU`` well below it means the server was saturated, as intended. The
``other CPU`` column says how much of the machine other processes took
meanwhile.

The server is started with its per-connection request rate limit lifted to a
rate no scenario reaches (the check still runs, so its cost is measured);
``--server-arg=--rate=50`` puts the default back.

Several processes: ``--workers 1,2`` runs every scenario on one process and
on ``--workers 2`` (a supervisor and two workers on one port, sharing a Redis
the bench starts); the server's CPU is then the sum of every worker's and the
supervisor's. ``--nodes 1,2,3`` runs it on clusters of that many separate
nodes, each a ``python -m chatserver --redis ...`` process on a port of its
own, with the users (and the senders) spread evenly over the nodes so that
deliveries cross nodes; a table gives each node's CPU per delivery to its own clients, the
Redis server's CPU and the PUBLISH commands per message (from ``INFO
commandstats``). With ``--netns`` (root only) each node runs in a network
namespace of its own, joined to the bench's by a veth pair, which the bench
makes and removes; without it, or where namespaces cannot be made, the nodes
listen on 127.0.0.1.

Users, groups and credentials follow :mod:`chatserver.bench.population`; a
server given with ``--compare`` must know them (CPU and memory are read only
with its pid), and ``--storage SPEC`` runs our server on another storage,
with users signing in by claimed id (``--dev-auth``) unless ``--token-auth``.

Side by side (:mod:`chatserver.bench.compare`): ``--compare
[NAME=]URL[,PID]`` adds a running server, ``--compare-command NAME=COMMAND``
one that the bench starts afresh for each scenario (``{port}`` in the command
becomes a free port); with either, the scenarios are by default the ``seed``
suite, the loads of the comparison with node-chat-server. ``--rounds N``
runs the whole plan N times, interleaved, and reports medians; a table then
puts the servers side by side with the ratio of ours to each.

``python -m chatserver.bench.sqlite_history`` is a separate benchmark: history
queries on a large SQLite database.
"""
