-- params: name. A released lease expires at -infinity: report it as 0.
SELECT position::text, owner,
       (extract(epoch FROM greatest(lease_expires, timestamptz 'epoch')) * 1000000)::bigint
FROM {schema}.checkpoints WHERE name = %(name)s
