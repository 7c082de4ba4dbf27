"""The server core: parsing, routing script, processes, transports."""
