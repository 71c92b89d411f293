-- params: none
SELECT name, position, owner, lease_expires_at FROM eventfold_checkpoints ORDER BY name
