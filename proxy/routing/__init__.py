"""Statement classification and backend selection."""
