-- params: none
SELECT name, position::text, owner,
       (extract(epoch FROM greatest(lease_expires, timestamptz 'epoch')) * 1000000)::bigint
FROM {schema}.checkpoints ORDER BY name
