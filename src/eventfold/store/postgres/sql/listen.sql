-- params: none. Subscribe this connection to the append notifications.
LISTEN {channel_name}
