"""`exchange bench`: the project's own load generator and its ceilings (README: Performance)."""
