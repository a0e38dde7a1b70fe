"""How a command runs: its one entry-point tail, the one-line exits, Hydra resolvers, config checks, the
config tree, the garbage-collector pause."""
