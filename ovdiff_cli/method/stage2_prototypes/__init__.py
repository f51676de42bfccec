"""Stage 2, paper §3 "Class prototypes": support images → fg/bg masks → features → instance, class and part
prototypes, and the stuff filter of background prototypes."""
