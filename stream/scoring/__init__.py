"""Pure logic around a user's fresh scores: alert rules, score records, pseudonymised ids,
and which silent users are due for a re-score. No I/O: the worker's pipeline applies them,
the sinks serialise their records."""
