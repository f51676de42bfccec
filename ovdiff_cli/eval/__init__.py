"""Scoring (paper §4): the eight benchmarks' readers and class lists, mIoU, the eval loop and report,
and the offline demo on the procedural world."""
