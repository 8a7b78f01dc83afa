"""Sinks: where reports go. Text formats (table, JSON, CSV, the seed's),
the printer of a run, the --live screen, and the Prometheus exporter with
its HTTP server and web config. Imports core, naming and rows."""
