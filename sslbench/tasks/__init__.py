"""Pretext tasks: one file each (sslbench.plugins imports them all)."""
