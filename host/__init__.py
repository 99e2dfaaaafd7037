"""ziphalp host: data, quantisation, the board driver, the training loop and the CLI."""
