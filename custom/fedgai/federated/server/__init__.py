"""What runs at the server: the plain server (``controller``) and the HE job's components (``he_server``) on the
same core: screening (``screening``, ``validation``), what it remembers (``server_state``), the round summary
(``summary``) and the one line per round people read (``progress``)."""
