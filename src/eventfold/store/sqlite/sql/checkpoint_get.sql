-- params: name
SELECT position, owner, lease_expires_at FROM eventfold_checkpoints WHERE name = ?1
