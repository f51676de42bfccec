"""`ovdiff bench`: settings and table (`settings`), how figures are measured (`stats`), the sections
(`run`, `build`) and the Ray engine's section (`engines`)."""
