"""What the agent and the controller share: addresses, auth headers, metrics exposition."""
