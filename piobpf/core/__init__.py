"""The core: what every layer shares and nothing else. Keys and the --by
modes that shape them, cumulative counts and their snapshots, the typed
configuration of a run, and the one way of reporting trouble. Pure data and
arithmetic; imports only the standard library."""
