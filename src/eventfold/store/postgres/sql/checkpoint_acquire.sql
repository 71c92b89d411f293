-- params: name, owner, ttl (seconds). Take (or renew) the lease unless another
-- live owner holds it; the database clock decides, so all runners agree.
INSERT INTO {schema}.checkpoints (name, owner, lease_expires)
VALUES (%(name)s, %(owner)s, clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
SET owner = excluded.owner, lease_expires = excluded.lease_expires
WHERE checkpoints.owner IS NULL
   OR checkpoints.owner = excluded.owner
   OR checkpoints.lease_expires < clock_timestamp()
RETURNING owner
