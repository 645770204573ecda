"""Remote execution: the ZeroMQ scheduler, executor daemons, the client, and capability matching."""
