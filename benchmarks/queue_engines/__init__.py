"""Side-by-side measurements of PostgreSQL queue engines for stage hand-off (issue 19).

Each engine's module measures the same criteria against the machine's PostgreSQL, in a database of its own
(``queue_eval_<engine>_<random>``, dropped afterwards), and through a pgbouncer in transaction mode started
on a free loopback port and stopped by its pid. An engine that is not installed in the running interpreter is
skipped, so ``make bench`` needs only pgqueuer (in the lock); procrastinate and DBOS were measured from
scratch virtual environments (see docs/decisions/queue-engine.md for the commands and figures).
"""
