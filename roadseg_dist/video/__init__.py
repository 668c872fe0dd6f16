"""Reading videos, below every stage: ``decode`` (probe, frame ranges, frame N = the N-th frame of one
sequential decode), ``ranged`` (an object in storage as a seekable file), ``window`` (which decoded frames
belong to a range). Infer segments the frames it decodes; results extracts the same frames by index."""
