"""Where the method runs: the folder job and the engine choice (`folder`: `Pipeline.segment_folder`,
`build_vocabulary`), class names → cached prototypes (`vocab`), support sets and the user's photos in
the cache (`support`, `photos`), images streamed through the segmenter here (`local`) or on a Ray
cluster (`raycluster`), resumable and sharded jobs (`resume`), and explanation files (`explain`)."""
