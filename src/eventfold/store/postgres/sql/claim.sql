-- params: none. The first statement of a transaction that may append to the
-- store after other writes (store.transaction(), with or without the
-- application's connection), run before the transaction has an id: it
-- takes the events table's RowExclusiveLock (the empty DELETE; its lock is
-- taken while the statement is parsed, nothing is deleted) and marks the
-- transaction (a transaction-local setting, undone with the lock by a
-- rolled-back savepoint). Readers count a transaction from its id on while
-- it holds that lock (log_writers.sql); an append in a longer transaction
-- that is not marked and already has an id is refused (_statements.py).
WITH locked AS (DELETE FROM {schema}.events WHERE false RETURNING 1)
SELECT set_config({mark_name}, 'on', true) FROM (SELECT count(*) FROM locked) AS c
