"""Running actions: sandboxes, the local executor, tests, and the engine that schedules them."""
