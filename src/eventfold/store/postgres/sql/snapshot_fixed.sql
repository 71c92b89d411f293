-- params: none. Whether the transaction reads one snapshot throughout
-- (REPEATABLE READ, SERIALIZABLE): an append in it that runs into a version
-- a newer transaction took cannot see that transaction's events, and the
-- transaction has to run again (TransactionConflict).
SELECT current_setting('transaction_isolation') <> 'read committed'
