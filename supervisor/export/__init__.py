"""Turning a supervise config into another manager's files (`supervise export`)."""
