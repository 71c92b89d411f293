-- params: none. Run in an application's REPEATABLE READ or SERIALIZABLE
-- transaction before log_floor.sql: readers count the transaction from now
-- on (log_writers.sql). The lock an append takes, so it waits for nothing
-- but a table lock someone took by hand.
LOCK TABLE {schema}.events IN ROW EXCLUSIVE MODE
