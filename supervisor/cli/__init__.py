"""The user's edge: the `supervise` command line and the `top` view."""
