"""The worker process: loop, stages, transports, store, CLI."""
