"""What training leaves on disk: immutable artifacts (``artifacts``), resumable
checkpoints (``checkpointing``), run folders and their locks (``runs``), and the list
of saved nets (``catalog``)."""
