"""Hypercorn settings for the benchmarks: ``hypercorn --config python:benchmarks.peers.hypercorn_config``.

Only what keeps the comparison fair with the hand-written peers, which have no such limits:

* keep_alive_max_requests: hypercorn closes a connection after 1,000 requests by default (HTTP/1.1
  and HTTP/2).  wrk reconnects, paying a handshake the others do not; h2load never reconnects an
  HTTP/2 connection and waits forever for the requests it had left.
* keep_alive_timeout: the default 5 s would drop http1-mem's idle connections mid-measurement.
* backlog: as deep as trio's default for the hand-written servers (SOMAXCONN).

The worker class (trio) and ``--workers 0`` (serve in the hypercorn process itself, no fork, so its
pid's RSS is the server's) are on the command line, in benchmarks/servers.py.
"""

keep_alive_max_requests = 2**62
keep_alive_timeout = 600
backlog = 4096
