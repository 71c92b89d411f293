-- params: name, owner, now (us), expires (us)
-- Take (or renew) the lease unless another live owner holds it.
INSERT INTO eventfold_checkpoints (name, owner, lease_expires_at, updated_at)
VALUES (?1, ?2, ?4, ?3)
ON CONFLICT (name) DO UPDATE SET owner = ?2, lease_expires_at = ?4
WHERE eventfold_checkpoints.owner IS NULL
   OR eventfold_checkpoints.owner = ?2
   OR eventfold_checkpoints.lease_expires_at < ?3
