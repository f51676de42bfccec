"""Where the method runs: class names → cached prototypes on this machine (`vocab`), resumable and
sharded segment jobs (`resume`), and the same work on a Ray cluster (`raycluster`)."""
