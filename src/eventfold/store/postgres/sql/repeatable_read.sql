-- params: none. The first statement of a multi-stream append's transaction
-- (append_many): every statement of it then reads one snapshot, taken before
-- the transaction has an id. So a stream's versions keep the log's (tx, seq)
-- order: under READ COMMITTED a later statement could number its events after
-- those of a newer transaction (a larger tx) that committed meanwhile, and
-- they would come before them in the log. A version taken meanwhile is a
-- unique violation instead, and the append is tried again.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ
