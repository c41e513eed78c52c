"""nsed: N-Way Self-Evaluating Deliberation."""
