"""Data: the embedded procedural data set, its classes, the item contract, and the real layouts (layouts/)."""
