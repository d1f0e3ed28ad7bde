"""Check functions, grouped by what they probe. Each takes plain objects and returns a `Check`; none writes files."""
