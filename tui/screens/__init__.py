"""The fleet TUI's screens: fleet, device, rollouts, events, and the modal dialogs."""
