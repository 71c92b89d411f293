-- params: none. See listen_checkpoints.sql.
UNLISTEN {checkpoint_channel_name}
