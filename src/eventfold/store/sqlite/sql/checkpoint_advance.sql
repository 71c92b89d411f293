-- params: name, position, owner, now (us), expires (us)
-- Fenced: only the lease holder advances (and thereby renews its lease).
UPDATE eventfold_checkpoints
SET position = ?2, updated_at = ?4, lease_expires_at = ?5
WHERE name = ?1 AND owner = ?3
