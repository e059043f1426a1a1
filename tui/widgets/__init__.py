"""Widgets shared by the fleet TUI's screens."""
