"""ziphalp simulation: the golden model, cocotb benches and the simulated board."""
