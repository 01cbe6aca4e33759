"""Backbones with named taps and roles. Probes and transfer heads only ever ask for taps and roles."""
