"""Transfer protocols: one file each (sslbench.plugins imports them all); _-prefixed modules are their helpers."""
