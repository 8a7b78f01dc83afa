"""Rows: a Snapshot and its names made into a sorted report, the one shape
every sink prints. Pure; imports core and naming."""
