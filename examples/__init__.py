"""Bundled examples: each `make_task()` returns a `recipe.Task` built from data that ships with the install."""
