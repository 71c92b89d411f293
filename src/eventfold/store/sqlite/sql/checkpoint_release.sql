-- params: name, owner
UPDATE eventfold_checkpoints SET owner = NULL, lease_expires_at = 0
WHERE name = ?1 AND owner = ?2
