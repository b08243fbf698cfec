"""History to labelled examples: what the model learns from and is judged on."""
