"""Applications that embed agent-server: see docs/embedding.md."""
