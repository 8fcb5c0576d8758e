"""Below everything: logs, metrics, serving (supervisor, sockets, HTTP limits), Redis loops."""
