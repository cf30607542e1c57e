"""aidp: run many coding workstreams (a git worktree plus a command) in parallel."""

__version__ = "0.1.0"
