"""Property-based tests (hypothesis) of the validators of outside input."""
