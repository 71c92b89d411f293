-- params: name, owner, now (us)
-- Fenced: only the lease holder puts the checkpoint back to the start.
UPDATE eventfold_checkpoints SET position = 0, updated_at = ?3
WHERE name = ?1 AND owner = ?2
