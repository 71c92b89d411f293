-- params: name, position, owner, now (us), expires (us)
-- Fenced: only the lease holder advances (and thereby renews its lease), and
-- only forward; no row changed means one of the two (the caller looks which).
UPDATE eventfold_checkpoints
SET position = ?2, updated_at = ?4, lease_expires_at = ?5
WHERE name = ?1 AND owner = ?3 AND position < ?2
