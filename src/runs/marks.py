"""The files that mark a run dir's state, read by the commands that list runs (src.compare) without loading the
code that writes them."""

# the run was stopped before it finished (src/runs/interrupts.py writes it; a resume that finishes removes it)
INTERRUPTED = "INTERRUPTED"
