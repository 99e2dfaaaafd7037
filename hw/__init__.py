"""ziphalp gateware: the SGD engine, the link, and board top levels (Amaranth)."""
