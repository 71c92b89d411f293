-- params: none. On a connection of the store's pool, for an append inside a
-- REPEATABLE READ or SERIALIZABLE transaction that took the events table's
-- lock after its id (see _statements.py): the xmax of a snapshot taken now,
-- while that transaction holds the lock. Every row a reader can have passed
-- over has a smaller tx.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text
