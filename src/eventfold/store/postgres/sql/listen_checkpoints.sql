-- params: none. A wait_for on a connection of the pool hears of checkpoints
-- moving (checkpoint_advance.sql notifies at commit); unlisten_checkpoints.sql
-- undoes it before the connection goes back.
LISTEN {checkpoint_channel_name}
