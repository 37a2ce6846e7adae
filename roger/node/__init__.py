"""A node's own processes: the root supervisor, the control server, the system process."""
