"""The served parts a version is built from: networks and heads, and how each is fitted."""
