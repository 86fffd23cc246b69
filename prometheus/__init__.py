"""The platform's existing entry points, now served by this project."""
