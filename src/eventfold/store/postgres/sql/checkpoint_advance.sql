-- params: name, position (text), owner, ttl (seconds)
-- Fenced: only the lease holder advances (and thereby renews its lease), and
-- only forward; no row returned means one of the two (the caller looks which).
-- RETURNING: in pipeline mode fetching the row is what waits for the answer.
-- {checkpoint_notify} is pg_notify(<schema>.checkpoints, '<position> <name>') or
-- NULL (a store created with notify=False): wait_for hears of the move when it
-- commits, and where to (RETURNING sees the new position).
UPDATE {schema}.checkpoints
SET position = %(position)s::numeric, updated_at = now(),
    lease_expires = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE name = %(name)s AND owner = %(owner)s AND position < %(position)s::numeric
RETURNING name, {checkpoint_notify}
