"""Stage 1, paper §3 "Support set generation": a generator draws each class's support images and their attribution maps."""
