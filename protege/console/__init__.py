"""The console: a web view of the store (exchanges, disagreements, daily figures) and the place
people correct answers. ``queries`` is its read-only catalog, ``corrections`` writes feedback."""
